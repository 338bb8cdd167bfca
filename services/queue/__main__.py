"""`python -m services.queue` and `mailbus-queue`: run the queue service alone."""

from __future__ import annotations

import sys

from libs.common.runtime.service import main as run_main
from services.queue.service import QueueService


def main() -> int:
    return run_main("queue", QueueService)


if __name__ == "__main__":
    sys.exit(main())
