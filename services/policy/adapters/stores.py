"""The shared state policy keeps in KV: POP3-before-SMTP grants and failed-login counts.

Both are keyed by `subjects.token(canonical client address)` and written with
compare-and-set, so any number of replicas can write at once without losing
an update, and read by every replica, so they hold cluster-wide and across
restarts.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TypeVar

from nats.js import JetStreamContext
from nats.js.kv import KeyValue

from libs.common.contract import subjects
from libs.common.contract.records import Record
from libs.common.runtime.kv import CAS_ATTEMPTS, Bucket, backoff
from services.policy.core import (
    ContentionError,
    GrantFormatError,
    Pop3Grant,
    RecordFormatError,
    canonical_ip,
    later,
)
from services.policy.core.failures import FAILURE_WINDOW, FailedLogins, released, reserved

log = logging.getLogger(__name__)

# A grant's key outlives its expiry by this much: the core's `now < expires_at`
# decides, never the NATS server's timer, whatever the clocks say.
GRANT_TTL_MARGIN = timedelta(seconds=60)


R = TypeVar("R", bound=Record)


def readable(record: type[R], what: str, value: bytes) -> R | None:
    """The stored record, or None (and a warning) when it does not parse: it is ignored."""
    try:
        return record.decode(value)
    except RecordFormatError as exc:
        log.warning("%s ignored: %s", what, exc)
        return None


def client_key(client_ip: str) -> str | None:
    ip = canonical_ip(client_ip)
    return None if ip is None else subjects.token(ip)


class GrantStore:
    def __init__(self, js: JetStreamContext) -> None:
        self._bucket = Bucket(js, subjects.POP3_GRANTS_BUCKET)

    async def get(self, client_ip: str) -> Pop3Grant | None:
        key = client_key(client_ip)
        if key is None:
            return None
        entry = await self._bucket.get(key)
        if entry is None or entry.value is None:
            return None
        return readable(Pop3Grant, f"grant for {client_ip}", entry.value)

    async def record(self, grant: Pop3Grant, now: datetime) -> bool:
        """Store the grant unless a longer one is there or it is long past; True if written."""
        ttl = (grant.expires_at + GRANT_TTL_MARGIN - now).total_seconds()
        key = client_key(grant.client_ip)
        if key is None or ttl < 1:
            return False
        for attempt in range(CAS_ATTEMPTS):
            entry = await self._bucket.get(key)
            current = None
            if entry is not None and entry.value is not None:
                try:
                    current = Pop3Grant.decode(entry.value)
                except GrantFormatError:
                    current = None  # overwritten by a readable one
            if not later(grant, current):
                return False
            revision = entry.revision if entry is not None and entry.revision else 0
            if await self._bucket.swap(key, grant.encode(), revision, ttl):
                return True
            await backoff(attempt)
        raise ContentionError(f"grant for {grant.client_ip}: {CAS_ATTEMPTS} concurrent writes")


class FailedLoginCounter:
    """Failures per client address, reserved before a password check and kept if it fails."""

    def __init__(self, js: JetStreamContext, window: timedelta = FAILURE_WINDOW) -> None:
        self._bucket = Bucket(js, subjects.AUTH_FAILURES_BUCKET)
        self._window = window

    async def get(self, client_ip: str) -> FailedLogins | None:
        key = client_key(client_ip)
        entry = await self._bucket.get(key) if key is not None else None
        if entry is None or entry.value is None:
            return None
        return FailedLogins.decode(entry.value)

    async def reserve(self, client_ip: str, limit: int, now: datetime) -> Reservation:
        """One failure counted in advance; `granted` is False when the address is locked."""
        key = client_key(client_ip)
        if key is None:
            return Reservation(granted=True, count=None)
        for attempt in range(CAS_ATTEMPTS):
            entry = await self._bucket.get(key)
            previous = self._decoded(entry)
            counted = reserved(previous, limit, now)
            if counted is None:
                return Reservation(granted=False, count=previous)
            if await self._write(key, entry, counted, now):
                return Reservation(granted=True, count=counted)
            await backoff(attempt)
        raise ContentionError(f"failed logins of {client_ip}: {CAS_ATTEMPTS} concurrent writes")

    async def release(self, client_ip: str, now: datetime) -> None:
        """Give one reservation back: the login succeeded or was never checked."""
        key = client_key(client_ip)
        if key is None:
            return
        for attempt in range(CAS_ATTEMPTS):
            entry = await self._bucket.get(key)
            counted = released(self._decoded(entry), now)
            if counted is None or await self._write(key, entry, counted, now):
                return
            await backoff(attempt)
        raise ContentionError(f"failed logins of {client_ip}: {CAS_ATTEMPTS} concurrent writes")

    @staticmethod
    def _decoded(entry: KeyValue.Entry | None) -> FailedLogins | None:
        if entry is None or entry.value is None:
            return None
        return FailedLogins.decode(entry.value)

    async def _write(
        self, key: str, entry: KeyValue.Entry | None, counted: FailedLogins, now: datetime
    ) -> bool:
        # The key lives as long as its window: the server forgets the count when it ends.
        ttl = (counted.ends_at(self._window) - now).total_seconds()
        revision = entry.revision if entry is not None and entry.revision else 0
        return await self._bucket.swap(key, counted.encode(), revision, ttl) is not None


@dataclass(frozen=True)
class Reservation:
    granted: bool
    count: FailedLogins | None  # after the reservation; when refused, the count that locks
