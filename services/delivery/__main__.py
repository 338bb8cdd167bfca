"""`python -m services.delivery` and `mailbus-delivery`: run the delivery service alone."""

from __future__ import annotations

import sys

from libs.common.runtime.service import main as run_main
from services.delivery.service import DeliveryService


def main() -> int:
    return run_main("delivery", DeliveryService)


if __name__ == "__main__":
    sys.exit(main())
