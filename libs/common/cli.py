"""The old import path of the `mailbus` command (now `ops.cli`), for tools outside this repo.

The shared benchmark harness (`../shared/bench/perf-compare/mb_up.py`) runs
`libs.common.cli.main`. The one exception to "libs never imports ops" (the
import-linter contract names it); drop it once the harness imports `ops.cli`.
"""

from __future__ import annotations

from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    from ops.cli import main as mailbus_main

    return mailbus_main(argv)
