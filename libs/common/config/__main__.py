"""python -m libs.common.config check FILE: the same check as `mailbus config check FILE`."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from .cli import config_check


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m libs.common.config")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="validate FILE and print the effective configuration")
    check.add_argument("file")
    args = parser.parse_args(argv)
    return config_check(args.file)


if __name__ == "__main__":
    sys.exit(main())
