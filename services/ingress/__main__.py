"""`python -m services.ingress` and `mailbus-ingress`: run the ingress service alone."""

from __future__ import annotations

import sys

from libs.common.runtime.service import main as run_main
from services.ingress.service import IngressService


def main() -> int:
    return run_main("ingress", IngressService)


if __name__ == "__main__":
    sys.exit(main())
