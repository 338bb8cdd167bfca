"""POP3-before-SMTP grants: a client address may relay for a while after a POP3 login.

A grant is stored (by the adapter, in a KV bucket shared by every replica)
with its expiry written in it; the core alone decides, with `now`, whether
it still holds. The bucket's TTL only cleans up, a little after the expiry,
so a clock difference between NATS and policy can never extend a grant.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from libs.common.contract.policy import canonical_ip
from libs.common.contract.records import Record, ZonedTime
from services.policy.core.errors import GrantFormatError


class Pop3Grant(Record):
    client_ip: str  # canonical (see canonical_ip)
    user: str
    granted_at: ZonedTime
    expires_at: ZonedTime

    unreadable = GrantFormatError

    def valid_at(self, now: datetime) -> bool:
        return now < self.expires_at


def grant_for_login(
    client_ip: str, user: str, login_at: datetime, duration: timedelta
) -> Pop3Grant | None:
    """The grant a POP3 login earns; None when the client address is no IP address."""
    ip = canonical_ip(client_ip)
    if ip is None:
        return None
    return Pop3Grant(client_ip=ip, user=user, granted_at=login_at, expires_at=login_at + duration)


def later(new: Pop3Grant, current: Pop3Grant | None) -> bool:
    """Whether `new` should replace `current`: a redelivered old login never shortens a grant."""
    return current is None or new.expires_at > current.expires_at
