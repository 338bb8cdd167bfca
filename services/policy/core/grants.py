"""POP3-before-SMTP grants: a client address may relay for a while after a POP3 login.

A grant is stored (by the adapter, in a KV bucket shared by every replica)
with its expiry written in it; the core alone decides, with `now`, whether
it still holds. The bucket's TTL only cleans up, a little after the expiry,
so a clock difference between NATS and policy can never extend a grant.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from libs.common.contract.policy import canonical_ip


class GrantFormatError(ValueError):
    """A stored grant that cannot be read; it grants nothing."""


@dataclass(frozen=True)
class Pop3Grant:
    client_ip: str  # canonical (see clients.canonical_ip)
    user: str
    granted_at: datetime
    expires_at: datetime

    def valid_at(self, now: datetime) -> bool:
        return now < self.expires_at

    def encode(self) -> bytes:
        return json.dumps(
            {
                "client_ip": self.client_ip,
                "user": self.user,
                "granted_at": self.granted_at.isoformat(),
                "expires_at": self.expires_at.isoformat(),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def decode(cls, data: bytes) -> Pop3Grant:
        try:
            raw = json.loads(data)
            grant = cls(
                client_ip=str(raw["client_ip"]),
                user=str(raw["user"]),
                granted_at=datetime.fromisoformat(raw["granted_at"]),
                expires_at=datetime.fromisoformat(raw["expires_at"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise GrantFormatError(f"unreadable grant: {exc}") from None
        if grant.expires_at.tzinfo is None or grant.granted_at.tzinfo is None:
            raise GrantFormatError("grant times without a time zone")
        return grant


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
