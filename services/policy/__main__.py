"""`python -m services.policy` and `mailbus-policy`: run the policy service alone."""

from __future__ import annotations

import sys

from libs.common.runtime.service import main as run_main
from services.policy.service import PolicyService


def main() -> int:
    return run_main("policy", PolicyService)


if __name__ == "__main__":
    sys.exit(main())
