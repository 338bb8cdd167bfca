"""Failed logins of one client address, as stored in the AUTH_FAILURES bucket.

Counted here for the limits to act on (blocking, slowing down); the count is
a fold over failures: each one adds to it, and the key's TTL forgets it
`window` after the last failure, so a crashed replica leaves nothing behind.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

FAILURE_WINDOW = timedelta(hours=1)


@dataclass(frozen=True)
class FailedLogins:
    count: int
    first_at: datetime
    last_at: datetime

    def after_failure(self, now: datetime) -> FailedLogins:
        return FailedLogins(count=self.count + 1, first_at=self.first_at, last_at=now)

    def encode(self) -> bytes:
        return json.dumps(
            {
                "count": self.count,
                "first_at": self.first_at.isoformat(),
                "last_at": self.last_at.isoformat(),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> FailedLogins | None:
        """None for a value that cannot be read: counting starts over."""
        try:
            raw = json.loads(data)
            return cls(
                count=int(raw["count"]),
                first_at=datetime.fromisoformat(raw["first_at"]),
                last_at=datetime.fromisoformat(raw["last_at"]),
            )
        except (ValueError, KeyError, TypeError):
            return None


def first_failure(now: datetime) -> FailedLogins:
    return FailedLogins(count=1, first_at=now, last_at=now)
