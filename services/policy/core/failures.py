"""Failed logins of one client address, as stored in the AUTH_FAILURES bucket.

Counted here for the limits to act on (blocking, slowing down); the count is
a fold over failures: each one adds to it, and the key's TTL forgets it
`window` after the last failure, so a crashed replica leaves nothing behind.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from libs.common.contract.records import Record, Time
from services.policy.core.errors import CountFormatError

FAILURE_WINDOW = timedelta(hours=1)


class FailedLogins(Record):
    count: int
    first_at: Time
    last_at: Time

    unreadable = CountFormatError

    def after_failure(self, now: datetime) -> FailedLogins:
        return FailedLogins(count=self.count + 1, first_at=self.first_at, last_at=now)

    @classmethod
    def decode(cls, data: bytes) -> FailedLogins | None:  # type: ignore[override]
        """None for a value that cannot be read: counting starts over, as it always has."""
        try:
            return super().decode(data)
        except CountFormatError:
            return None


def first_failure(now: datetime) -> FailedLogins:
    return FailedLogins(count=1, first_at=now, last_at=now)
