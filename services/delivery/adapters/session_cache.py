"""Finished SMTP sessions kept open a moment for the next job to the same place.

Postfix's connection cache: a session whose transaction went well stays open for
a short while (IDLE_S, Postfix's smtp_connection_cache_time_limit), so the next
job to the same destination skips the connect, greeting, EHLO, STARTTLS and AUTH.
A session is reused only under the key it was opened for: the destination and
every setting the session was set up with (TLS policy, credentials, HELO name,
CA file), so a changed configuration never reuses a session opened under the old
one. Each session serves at most MAX_TRANSACTIONS transactions and lives at most
MAX_AGE_S (Postfix's smtp_connection_reuse_count_limit and _time_limit), so one
long-lived connection does not pin a destination to one of its addresses.

Between transactions the session sends RSET (SmtpSession.transact); a session the
server closed while it was idle fails there, before MAIL, and the courier then
opens a fresh one for the same job: a stale cache entry never costs an attempt.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field

from services.delivery.adapters.smtp_client import SessionSettings, SmtpSession

IDLE_S = 2.0
MAX_TRANSACTIONS = 100
MAX_AGE_S = 300.0
# Idle sessions kept in all; past this the oldest is closed (a worker has at most as
# many sessions in use as it has slots, so this only bounds a burst to many places).
MAX_IDLE = 32


@dataclass(frozen=True)
class SessionKey:
    destination: str  # Destination.key: "relay:", "mx:example.com"
    settings: SessionSettings


@dataclass(eq=False)  # an entry is itself, whatever session it holds
class _Idle:
    key: SessionKey
    session: SmtpSession
    expiry: asyncio.TimerHandle | None = field(default=None, repr=False)


class SessionCache:
    def __init__(
        self,
        idle_s: float = IDLE_S,
        max_transactions: int = MAX_TRANSACTIONS,
        max_age_s: float = MAX_AGE_S,
        max_idle: int = MAX_IDLE,
    ) -> None:
        self.idle_s = idle_s
        self.max_transactions = max_transactions
        self.max_age_s = max_age_s
        self.max_idle = max_idle
        self._idle: list[_Idle] = []  # oldest first
        self._closing: set[asyncio.Task[None]] = set()
        self.reused = 0  # sessions handed out again (for tests and metrics)

    def __len__(self) -> int:
        return len(self._idle)

    def take(self, key: SessionKey) -> SmtpSession | None:
        """The most recently parked healthy session for `key`, if any."""
        for entry in reversed(self._idle):
            if entry.key == key:
                self._forget(entry)
                if entry.session.healthy:
                    self.reused += 1
                    return entry.session
                self._close_later(entry.session)
        return None

    def give(self, key: SessionKey, session: SmtpSession) -> None:
        """Park a session after its jobs; one that cannot serve again is closed."""
        if not self._reusable(session):
            self._close_later(session)
            return
        entry = _Idle(key, session)
        entry.expiry = asyncio.get_running_loop().call_later(self.idle_s, self._expire, entry)
        self._idle.append(entry)
        while len(self._idle) > self.max_idle:
            oldest = self._idle[0]
            self._forget(oldest)
            self._close_later(oldest.session)

    async def close(self) -> None:
        """Close every parked session (on shutdown) and wait for all closes under way."""
        for entry in list(self._idle):
            self._forget(entry)
            self._close_later(entry.session)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)

    def _reusable(self, session: SmtpSession) -> bool:
        age = time.monotonic() - session.opened_at
        return (
            session.healthy
            and session.transactions < self.max_transactions
            and age < self.max_age_s
        )

    def _expire(self, entry: _Idle) -> None:
        if entry in self._idle:
            self._idle.remove(entry)
            self._close_later(entry.session)

    def _forget(self, entry: _Idle) -> None:
        with contextlib.suppress(ValueError):
            self._idle.remove(entry)
        if entry.expiry is not None:
            entry.expiry.cancel()

    def _close_later(self, session: SmtpSession) -> None:
        # QUIT waits for the server's answer: not on the path of the job that let go.
        task = asyncio.get_running_loop().create_task(session.close(), name="smtp-close")
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)
