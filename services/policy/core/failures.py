"""Failed logins of one client address, as stored in the AUTH_FAILURES bucket.

The count is kept per fixed window that opens at the address's first failure
(`security.max_auth_failures_per_ip` per hour): once it reaches the limit, AUTH
is refused for the rest of that window. A check *reserves* its failure before
the password is looked at, with compare-and-set, so any number of concurrent
attempts on any number of replicas can run at most `limit` checks; a login that
succeeds (or is never checked) gives its reservation back.
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

    def ends_at(self, window: timedelta = FAILURE_WINDOW) -> datetime:
        return self.first_at + window

    def live(self, now: datetime, window: timedelta = FAILURE_WINDOW) -> bool:
        return now < self.ends_at(window)

    @classmethod
    def decode(cls, data: bytes) -> FailedLogins | None:  # type: ignore[override]
        """None for a value that cannot be read: counting starts over, as it always has."""
        try:
            return super().decode(data)
        except CountFormatError:
            return None


def first_failure(now: datetime) -> FailedLogins:
    return FailedLogins(count=1, first_at=now, last_at=now)


def locked(failed: FailedLogins | None, limit: int, now: datetime) -> bool:
    """The address has used up its failures of this window (limit 0: never)."""
    return bool(limit) and failed is not None and failed.live(now) and failed.count >= limit


def reserved(previous: FailedLogins | None, limit: int, now: datetime) -> FailedLogins | None:
    """The count with one more failure reserved, or None when the address is locked."""
    if locked(previous, limit, now):
        return None
    if previous is None or not previous.live(now):
        return first_failure(now)
    return previous.after_failure(now)


def released(current: FailedLogins | None, now: datetime) -> FailedLogins | None:
    """The count with one reservation given back; None when there is nothing to give back."""
    if current is None or not current.live(now) or current.count < 1:
        return None
    return FailedLogins(count=current.count - 1, first_at=current.first_at, last_at=current.last_at)
