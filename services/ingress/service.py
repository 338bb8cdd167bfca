"""Wiring of the ingress service: one asyncio server per `protocol: smtp` and `pop3` listener."""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from dataclasses import replace

from libs.common.config import Config
from libs.common.config.entries import Listener as ListenerEntry
from libs.common.contract.errors import CannotStart
from libs.common.mail.submission import MessageStore
from libs.common.mail.tlsutil import server_context
from libs.common.runtime.liveconfig import Commit
from libs.common.runtime.policy_client import PolicyClient
from libs.common.runtime.service import Context
from services.ingress.adapters.connections import ConnectionTable, lease_ttl
from services.ingress.adapters.handler import IngressHandler
from services.ingress.adapters.listener import Listener, ListenerSettings, Sessions
from services.ingress.adapters.pop3 import Pop3Server, Pop3Settings
from services.ingress.adapters.smtp import IngressSMTP
from services.ingress.core.deadlines import Deadlines

log = logging.getLogger(__name__)

DRAIN_TIMEOUT_S = 10.0


def _cannot_bind(name: str, address: str, exc: OSError) -> CannotStart:
    # Postfix's `fatal: bind ...`: one line naming the listener, not a traceback.
    reason = os.strerror(exc.errno) if exc.errno else str(exc)
    return CannotStart(f"bind listener {name} {address}: {reason}")


class IngressService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.sessions = Sessions()
        self._servers: list[asyncio.Server] = []
        self._pop3: list[Pop3Server] = []
        # Counted connections, when security.max_connections_per_ip is set.
        self.connections: ConnectionTable | None = None
        self._starting: set[asyncio.Task[None]] = set()
        # Where each listener is bound, by name: with port 0 the system chose it.
        self.addresses: dict[str, tuple[str, int]] = {}
        # What a new SMTP connection of each listener gets, swapped whole by a new
        # configuration revision; open sessions keep the pair they started with.
        self._current: dict[str, tuple[Listener, IngressHandler]] = {}
        self._bound: dict[str, ListenerEntry] = {}
        ctx.live.on_change(self._prepare)

    async def start(self) -> None:
        config = self.ctx.config
        listeners = [entry for entry in config.listeners if entry.protocol == "smtp"]
        tls_context = _tls_context(config)
        if tls_context is not None and config.tls.cert_file is None:
            log.warning(
                "tls: no cert_file; using a self-signed certificate for %s made at start "
                "(clients that verify certificates will refuse it)",
                config.server.hostname,
            )
        policy = PolicyClient(self.ctx.nc, timeout=config.policy.timeout.total_seconds())
        store = MessageStore(self.ctx.js)
        if config.security.max_connections_per_ip:
            self.connections = ConnectionTable(self.ctx.nc, self.ctx.instance, lease_ttl())
            await self.connections.start()
        security = config.security
        try:
            for entry in listeners:
                listener = Listener(
                    _settings(entry, config),
                    policy,
                    store,
                    self.sessions,
                    tls_context=tls_context,
                    connections=self.connections,
                )
                self._bound[entry.name] = entry
                await self._listen(listener, entry.host, entry.port)
            for entry in config.pop3_listeners:
                pop3 = Pop3Server(
                    Pop3Settings(
                        entry.name,
                        config.server.hostname,
                        entry.tls,
                        security.tls_handshake_timeout.total_seconds(),
                    ),
                    policy,
                    self.ctx.js,
                    tls_context,
                    connections=self.connections,
                )
                self._pop3.append(pop3)
                try:
                    self.addresses[entry.name] = await pop3.start(entry.host, entry.port)
                except OSError as exc:
                    raise _cannot_bind(entry.name, entry.address, exc) from exc
                log.info(
                    "listener %s (pop3) on %s:%d, tls %s",
                    entry.name,
                    *self.addresses[entry.name],
                    entry.tls,
                )
        except BaseException:
            await self._close_servers()
            raise

    def _session(self, name: str) -> IngressSMTP:
        listener, handler = self._current[name]
        return IngressSMTP(listener, handler)

    def _prepare(self, config: Config, revision: int) -> Commit:
        """A new revision's certificate and per-listener settings, for new sessions.

        Listener addresses, protocols and TLS modes stay as bound at start (a restart
        applies them); everything else a session is made with comes from `config`.
        """
        tls_context = _tls_context(config)  # a bad certificate fails here, before any swap
        entries = {entry.name: entry for entry in config.smtp_listeners}
        table = self.connections
        if table is None and config.security.max_connections_per_ip:
            # Connections were not counted so far: from now on policy can count them.
            table = ConnectionTable(self.ctx.nc, self.ctx.instance, lease_ttl())
        current: dict[str, tuple[Listener, IngressHandler]] = {}
        for name, (listener, _) in self._current.items():
            bound, entry = self._bound[name], entries.get(name)
            if entry is None or (entry.address, entry.tls) != (bound.address, bound.tls):
                log.warning("listener %s: its new address or tls waits for a restart", name)
                entry = bound
            settings = _settings(entry, config, tls=bound.tls)
            fresh = replace(listener, settings=settings, tls_context=tls_context, connections=table)
            current[name] = (fresh, IngressHandler(fresh))

        def commit() -> None:
            if table is not None and self.connections is None:
                self.connections = table
                # Its subscription and first report: a commit itself cannot await.
                task = asyncio.get_running_loop().create_task(table.start())
                self._starting.add(task)
                task.add_done_callback(self._starting.discard)
            self._current.update(current)
            for pop3 in self._pop3:
                pop3.tls_context = tls_context

        return commit

    async def _listen(self, listener: Listener, host: str, port: int) -> None:
        settings = listener.settings
        self._current[settings.name] = (listener, IngressHandler(listener))
        try:
            server = await asyncio.get_running_loop().create_server(
                lambda: self._session(settings.name),
                host=host,
                port=port,
                # Implicit TLS too is accepted as plain TCP: the session counts the connection
                # before it starts the handshake (smtp.py).
                reuse_address=True,
            )
        except OSError as exc:
            raise _cannot_bind(settings.name, f"{host}:{port}", exc) from exc
        self._servers.append(server)
        bound = server.sockets[0].getsockname()
        self.addresses[settings.name] = (str(bound[0]), int(bound[1]))
        log.info("listener %s on %s:%d, tls %s", settings.name, *bound[:2], settings.tls)

    async def stop(self) -> None:
        """Stop accepting; let open transactions finish (bounded), then close the rest."""
        self.sessions.draining = True
        for server in self._servers:
            server.close()
        for session in list(self.sessions.live):
            session.close_if_idle()
        if not await self.sessions.wait_empty(DRAIN_TIMEOUT_S):
            for session in list(self.sessions.live):
                log.warning("session %s still open after the drain; closing", session.session_id)
                session.abort()
            # An acceptance in flight must settle before NATS is drained under it.
            await self.sessions.wait_empty(DRAIN_TIMEOUT_S)
        await asyncio.gather(*(pop3.stop(DRAIN_TIMEOUT_S) for pop3 in self._pop3))
        await self._close_servers()
        if self._starting:
            await asyncio.gather(*self._starting, return_exceptions=True)
        if self.connections is not None:
            await self.connections.stop()

    async def _close_servers(self) -> None:
        for server in self._servers:
            server.close()
            await server.wait_closed()
        self._servers.clear()
        for pop3 in self._pop3:
            await pop3.stop(0)
        self._pop3.clear()


def _tls_context(config: Config) -> ssl.SSLContext | None:
    if not any(entry.tls != "none" for entry in config.listeners):
        return None
    # One per revision, so every listener and session started under it presents the
    # same certificate; read from the files again each time (a renewal keeps the paths).
    return server_context(config.server.hostname, config.tls.cert_file, config.tls.key_file)


def _settings(entry: ListenerEntry, config: Config, tls: str | None = None) -> ListenerSettings:
    hidden_group = config.relay.hide_local_ip_group
    security = config.security
    return ListenerSettings(
        name=entry.name,
        hostname=config.server.hostname,
        tls=tls or entry.tls,
        require_auth=entry.require_auth,
        data_size_limit=security.max_message_size or None,
        max_failed_commands=security.max_failed_commands,
        proxy_protocol=entry.proxy_protocol,
        hidden_clients=config.ip_group(hidden_group) if hidden_group else None,
        pregreet_wait=entry.pregreet_wait.total_seconds(),
        max_junk_commands=security.max_junk_commands,
        deadlines=Deadlines(
            command_timeout=security.command_timeout.total_seconds(),
            piece_timeout=security.data_timeout.total_seconds(),
            min_rate=security.min_data_rate,
        ),
        tls_handshake_timeout=security.tls_handshake_timeout.total_seconds(),
        scan_max_size=config.antispam.spamd_max_size if config.antispam.spamd else 0,
        scan_seconds=config.antispam.spamd_timeout.total_seconds(),
    )
