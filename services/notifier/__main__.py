"""`python -m services.notifier` and `mailbus-notifier`: run the notifier service alone."""

from __future__ import annotations

import sys

from libs.common.runtime.service import main as run_main
from services.notifier.service import NotifierService


def main() -> int:
    return run_main("notifier", NotifierService)


if __name__ == "__main__":
    sys.exit(main())
