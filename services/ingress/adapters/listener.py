"""One SMTP listener: its settings, its open sessions and what they work with, in one place.

The service makes a `Listener` for each `protocol: smtp` entry; the SMTP class
(smtp.py) and the handler (handler.py) both receive it, so neither reaches into
the other for the policy client, the store, the connection table or the metrics.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Protocol

from libs.common.contract.policy import HeldConnections
from libs.common.mail.submission import MessageStore
from libs.common.runtime.metrics import (
    SMTPD_CONNECTIONS,
    SMTPD_MESSAGE_BYTES,
    SMTPD_MESSAGES_ACCEPTED,
    SMTPD_SESSIONS_ACTIVE,
)
from libs.common.runtime.policy_client import PolicyClient
from services.ingress.adapters.connections import ConnectionTable
from services.ingress.core.deadlines import Deadlines


class IpMatcher(Protocol):
    """config's IpGroup, or anything else that knows its addresses."""

    def contains(self, ip: str) -> bool: ...


@dataclass(frozen=True)
class ListenerSettings:
    name: str
    hostname: str
    tls: str  # none | starttls | implicit
    require_auth: bool = False
    data_size_limit: int | None = None
    # Until policy's connect answer says otherwise (security.max_failed_commands).
    max_failed_commands: int = 0
    proxy_protocol: bool = False
    # relay.hide_local_ip_group: Received headers leave these clients out.
    hidden_clients: IpMatcher | None = None
    # The front door's own limits (listeners[].pregreet_wait, security.*), in seconds.
    pregreet_wait: float = 0.0
    max_junk_commands: int = 0
    deadlines: Deadlines = field(default_factory=lambda: Deadlines(300.0, 300.0))
    tls_handshake_timeout: float = 10.0
    # antispam.spamd set: messages up to this size go to policy to be scanned (0: none),
    # and their DATA answer may take this much longer (antispam.spamd_timeout).
    scan_max_size: int = 0
    scan_seconds: float = 0.0


class OpenSession(Protocol):
    """What a drain needs of an open session."""

    @property
    def session_id(self) -> str: ...

    def close_if_idle(self) -> None: ...

    def abort(self) -> None: ...


@dataclass
class Sessions:
    """The live sessions and acceptances of one service, so `stop()` can drain them."""

    live: set[OpenSession] = field(default_factory=set)
    accepting: set[asyncio.Task[None]] = field(default_factory=set)
    draining: bool = False
    _empty: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, session: OpenSession) -> None:
        self.live.add(session)
        self._empty.clear()

    def discard(self, session: OpenSession) -> None:
        self.live.discard(session)
        self._check_empty()

    def track(self, coro: Awaitable[None]) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.accepting.add(task)
        self._empty.clear()
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[None]) -> None:
        self.accepting.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: the session has replied or was gone already
        self._check_empty()

    def _check_empty(self) -> None:
        if not self.live and not self.accepting:
            self._empty.set()

    async def wait_empty(self, seconds: float) -> bool:
        self._check_empty()
        try:
            await asyncio.wait_for(self._empty.wait(), seconds)
        except TimeoutError:
            return False
        return True


@dataclass(frozen=True)
class ListenerMetrics:
    """The smtpd metrics of one listener: labelled with its name here and nowhere else."""

    listener: str

    def session_opened(self) -> None:
        SMTPD_CONNECTIONS.labels(self.listener).inc()
        SMTPD_SESSIONS_ACTIVE.labels(self.listener).inc()

    def session_closed(self) -> None:
        SMTPD_SESSIONS_ACTIVE.labels(self.listener).dec()

    def message_accepted(self, size: int) -> None:
        SMTPD_MESSAGES_ACCEPTED.labels(self.listener).inc()
        SMTPD_MESSAGE_BYTES.labels(self.listener).inc(size)


@dataclass(frozen=True)
class Listener:
    """What every session of the listener works with; one per listener, shared."""

    settings: ListenerSettings
    policy: PolicyClient
    store: MessageStore
    sessions: Sessions
    # The service's one server context (STARTTLS and implicit TLS alike), if any listener has TLS.
    tls_context: ssl.SSLContext | None = None
    # Counted connections, when security.max_connections_per_ip is set.
    connections: ConnectionTable | None = None
    clock: Callable[[], datetime] = lambda: datetime.now(UTC)

    @cached_property
    def metrics(self) -> ListenerMetrics:
        return ListenerMetrics(self.settings.name)

    def count(self, session_id: str, client_ip: str) -> HeldConnections | None:
        """Count the session, when connections are counted: what its connect query carries."""
        if self.connections is None:
            return None
        return self.connections.acquire(session_id, client_ip)

    def uncount(self, session_id: str) -> None:
        """The session no longer counts: it ended, or its client is exempt from the limit."""
        if self.connections is not None:
            self.connections.release(session_id)
