"""The POP3 listener: asyncio streams around `core.pop3.Pop3Session`.

Each connection is one task: read a command line, hand it to the state
machine, send its reply, do the work it asks for (STLS, the login through
policy, reading a message, the deletions at QUIT) and report the outcome back.

A login is checked by policy at its `auth` stage, as SMTP AUTH is: the
password goes as a PLAIN login of the POP3 listener's session, so failed
logins are counted per client address in the same place. After a successful
login the mailbox is locked for this session, and a `Pop3LoginSucceeded`
access event is published before the `+OK`: that is what makes
POP3-before-SMTP grants on every ingress replica.

With `security.max_connections_per_ip` set, each session is counted in the
instance's connection table like an SMTP session, before policy is asked at
connect: POP3 and SMTP connections of an address count against the same limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.trace import SpanKind

from libs.common.contract.events import Pop3LoginSucceeded
from libs.common.contract.policy import HeldConnections, PolicyQuery
from libs.common.contract.policy import Session as PolicySession
from libs.common.mail import maillines
from libs.common.mail.mailbox import MailboxEntry, MailboxLock, MailboxStore
from libs.common.runtime import maillog
from libs.common.runtime.policy_client import PolicyClient, publish_pop3_login
from libs.common.runtime.telemetry import tracer
from services.ingress.adapters.connections import ConnectionTable
from services.ingress.core import pop3
from services.ingress.core.pop3 import DropMessage, Pop3Session, Step, TlsMode

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

IDLE_TIMEOUT_S = 600.0  # RFC 1939 section 3: the autologout timer is at least 10 minutes
LINE_LIMIT = 1024  # the reader's buffer limit; the core refuses lines over 255 octets
SEND_TIMEOUT_S = 60.0
# A TLS close waits for the client's close_notify; a client that never sends one
# must not hold up a drain.
CLOSE_WAIT_S = 1.0


@dataclass(frozen=True)
class Pop3Settings:
    name: str
    hostname: str
    tls: TlsMode
    tls_handshake_timeout: float = 10.0  # security.tls_handshake_timeout, STLS and implicit


@dataclass
class Pop3Sessions:
    """Open sessions, so a drain can end the idle ones and wait for the busy ones."""

    live: set[Pop3Connection] = field(default_factory=set)
    draining: bool = False


class Pop3Server:
    """One `protocol: pop3` listener."""

    def __init__(
        self,
        settings: Pop3Settings,
        policy: PolicyClient,
        js: JetStreamContext,
        tls_context: ssl.SSLContext | None,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        connections: ConnectionTable | None = None,
    ) -> None:
        self.settings = settings
        self.connections = connections
        self.policy = policy
        self.js = js
        self.mailboxes = MailboxStore(js)
        self.tls_context = tls_context
        self.clock = clock
        self.sessions = Pop3Sessions()
        self._server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        if self.settings.tls != "none" and self.tls_context is None:
            raise ValueError(f"listener {self.settings.name}: TLS without a TLS context")
        self._server = await asyncio.start_server(
            self._serve,
            host=host,
            port=port,
            # Implicit TLS too starts as plain TCP: counted first, then the handshake.
            limit=LINE_LIMIT,
            reuse_address=True,
        )
        bound = self._server.sockets[0].getsockname()
        return str(bound[0]), int(bound[1])

    async def stop(self, grace_s: float) -> None:
        """No new connections; idle sessions end now (keeping their mail), busy ones finish."""
        self.sessions.draining = True
        if self._server is not None:
            self._server.close()
        for conn in list(self.sessions.live):
            conn.end_if_idle()
        tasks = [c.task for c in self.sessions.live if c.task is not None]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=grace_s)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=grace_s)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.settings.tls == "implicit":
            # Before anything is read: the ClientHello is TLS's, not the command reader's.
            writer.transport.pause_reading()  # type: ignore[attr-defined]
        conn = Pop3Connection(self, reader, writer)
        conn.task = asyncio.current_task()
        self.sessions.live.add(conn)
        try:
            await conn.run()
        finally:
            self.sessions.live.discard(conn)


class Pop3Connection:
    def __init__(
        self, server: Pop3Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.server = server
        self.reader = reader
        self.writer = writer
        self.task: asyncio.Task[None] | None = None
        self.session_id = secrets.token_hex(8)
        self.state = Pop3Session(tls_mode=server.settings.tls, hostname=server.settings.hostname)
        peer = writer.get_extra_info("peername")
        self.peer: tuple[str, int] = (str(peer[0]), int(peer[1])) if peer else ("", 0)
        self.account: str | None = None
        self.entries: list[MailboxEntry] = []
        self.lock: MailboxLock | None = None
        self._keeper: asyncio.Task[None] | None = None
        self._waiting = False
        self._lock_lost = False

    # --- the session loop ----------------------------------------------------------------

    async def run(self) -> None:
        settings = self.server.settings
        attributes: dict[str, str | int] = {
            "client.address": self.peer[0],
            "client.port": self.peer[1],
            "mailbus.listener": settings.name,
            "mailbus.session_id": self.session_id,
            "network.protocol.name": "pop3",
        }
        span = _tracer.start_span("pop3 session", kind=SpanKind.SERVER, attributes=attributes)
        try:
            with trace.use_span(
                span, end_on_exit=True, record_exception=False, set_status_on_exception=False
            ):
                await self._converse()
        except (ConnectionError, TimeoutError, asyncio.IncompleteReadError):
            pass  # a dropped client: no QUIT, so nothing is deleted
        except asyncio.CancelledError:
            pass  # a drain that could not wait any longer
        except Exception:
            log.exception("pop3 session %s", self.session_id)
        finally:
            await asyncio.shield(self._finish())

    async def _converse(self) -> None:
        table = self.server.connections
        held = None if table is None else table.acquire(self.session_id, self.peer[0])
        if self.server.settings.tls == "implicit":
            if not await self._handshake():
                return
        refusal = await self._connect_refusal(held)
        if refusal is not None:
            await self._send(pop3.err(refusal))
            return
        await self._send(self.state.greeting())
        while self.state.phase is not pop3.Phase.CLOSED:
            line = await self._read_line()
            if line is None:
                return
            if not await self._play(self.state.receive(line)):
                return
            if self._lock_lost:
                await self._send(pop3.err("[SYS/TEMP] Mailbox lock lost, closing connection"))
                return
            if self.server.sessions.draining and self.state.phase is pop3.Phase.AUTHORIZATION:
                await self._send(pop3.err("[SYS/TEMP] Server shutting down"))
                return

    async def _read_line(self) -> str | None:
        self._waiting = True
        try:
            raw = await asyncio.wait_for(self.reader.readline(), IDLE_TIMEOUT_S)
        except TimeoutError:
            await self._send(pop3.err("Autologout: idle for too long"))
            return None
        except ValueError:  # longer than the buffer: no honest client sends that
            await self._send(pop3.err("Command line too long, closing connection"))
            return None
        finally:
            self._waiting = False
        if not raw:
            return None
        return raw.rstrip(b"\r\n").decode("utf-8", "replace")

    def end_if_idle(self) -> None:
        """At drain: a session waiting for its next command ends now, without UPDATE."""
        if self._waiting and self.task is not None:
            self.task.cancel()

    async def _play(self, step: Step) -> bool:
        """Send, do the work, report it, repeat; False once the session is to end."""
        while True:
            if isinstance(step.action, pop3.StartTls):
                step = self._before_tls(step)
            if step.reply is not None:
                await self._send(step.reply)
            if step.close:
                return False
            if step.action is None:
                return True
            step = await self._do(step.action)

    async def _do(self, action: pop3.Action) -> Step:
        if isinstance(action, pop3.StartTls):
            return await self._start_tls()
        if isinstance(action, pop3.CheckLogin):
            return await self._login(action)
        if isinstance(action, pop3.Retrieve):
            return await self._retrieve(action)
        # Shielded: a client hanging up must not stop the deletions halfway.
        return await asyncio.shield(self._commit(action))

    async def _send(self, reply: pop3.Reply) -> None:
        self.writer.write(reply.encode())
        await asyncio.wait_for(self.writer.drain(), SEND_TIMEOUT_S)

    # --- actions -------------------------------------------------------------------------

    def _before_tls(self, step: Step) -> Step:
        """Checked before the +OK goes out; after it, the client's handshake arrives."""
        # Commands sent behind STLS before the handshake would be taken as if they came
        # over TLS (CVE-2011-0411's kind of injection): refuse such a session outright.
        if self.server.tls_context is None or _buffered(self.reader):
            log.warning("pop3 %s: data pipelined after STLS; closing", self.session_id)
            return self.state.tls_failed()
        # The handshake's first bytes must reach TLS, not this reader's buffer.
        self.writer.transport.pause_reading()  # type: ignore[attr-defined]
        return step

    async def _start_tls(self) -> Step:
        context = self.server.tls_context
        assert context is not None  # checked by _before_tls
        if not await self._handshake():
            return self.state.tls_failed()
        self.state.tls_started()
        return Step()

    async def _handshake(self) -> bool:
        """TLS under the session, within tls_handshake_timeout; one WARNING if not."""
        context = self.server.tls_context
        assert context is not None
        try:
            await asyncio.wait_for(
                self.writer.start_tls(context), self.server.settings.tls_handshake_timeout
            )
        except (ssl.SSLError, ConnectionError, TimeoutError) as exc:
            why = "handshake took too long" if isinstance(exc, TimeoutError) else str(exc)
            log.warning("pop3 %s: TLS with %s failed: %s", self.session_id, self.peer[0], why)
            return False
        return True

    async def _login(self, action: pop3.CheckLogin) -> Step:
        query = PolicyQuery(
            stage="auth",
            session=self._policy_session(),
            mechanism="PLAIN",  # USER/PASS sends the same as SASL PLAIN, in two commands
            username=action.user,
            password=action.password,
        )
        with _tracer.start_as_current_span("pop3 auth") as span:
            decision = await self.server.policy.ask(query)
            span.set_attribute("mailbus.policy_rule", decision.rule)
        if not decision.accepted:
            step = self.state.login_failed(decision.message, temporary=decision.code < 500)
            if decision.action == "disconnect":
                return Step(step.reply, close=True)
            return step
        account = decision.canonical or action.user
        try:
            lock = await self.server.mailboxes.lock(account, self.session_id)
            if lock is None:
                return self.state.login_locked()
            self.lock, self.account = lock, account
            self.entries = await self.server.mailboxes.entries(account)
            await publish_pop3_login(self.server.js, self._login_event(account))
        except Exception as exc:
            log.warning("pop3 %s: login of %s failed: %s", self.session_id, account, exc)
            await self._unlock()
            return self.state.login_failed("Mailbox unavailable, try again later", temporary=True)
        self._keeper = asyncio.create_task(self._keep_lock(), name="pop3-lock")
        maillog.emit(maillines.pop3_login(account, self.peer[0], self.server.settings.name))
        drop = [DropMessage(size=e.size, uid=e.uid) for e in self.entries]
        return self.state.login_succeeded(drop)

    def _login_event(self, account: str) -> Pop3LoginSucceeded:
        return Pop3LoginSucceeded(
            # One per session: a retried publish is a duplicate, a new session a new grant.
            event_id=f"pop3-login.{self.session_id}",
            occurred_at=self.server.clock(),
            client_ip=self.peer[0],
            user=account,
            listener=self.server.settings.name,
            session_id=self.session_id,
        )

    async def _retrieve(self, action: pop3.Retrieve) -> Step:
        entry = self.entries[action.index]
        try:
            assert self.account is not None
            content = await self.server.mailboxes.read(self.account, entry)
        except Exception as exc:
            log.warning("pop3 %s: message %s unreadable: %s", self.session_id, entry.uid, exc)
            return self.state.retrieve_failed()
        return self.state.retrieved(action, content)

    async def _commit(self, action: pop3.Commit) -> Step:
        if self._lock_lost:  # the messages may be another session's to delete now
            return self.state.committed(False)
        done = True
        if action.indexes and self.account is not None:
            for index in action.indexes:
                try:
                    await self.server.mailboxes.delete(self.account, self.entries[index])
                except Exception as exc:
                    log.warning("pop3 %s: delete failed: %s", self.session_id, exc)
                    done = False
        return self.state.committed(done)

    # --- the mailbox lock ----------------------------------------------------------------

    async def _keep_lock(self) -> None:
        """Refresh the lock at a third of its TTL; if it is lost, end the session."""
        lock = self.lock
        assert lock is not None
        while True:
            await asyncio.sleep(lock.ttl / 3)
            try:
                kept = await lock.refresh()
            except Exception as exc:  # NATS away for a moment: the TTL leaves room to retry
                log.warning("pop3 %s: lock not refreshed: %s", self.session_id, exc)
                continue
            if not kept:
                # Another session may have the mailbox now: this one must not go on.
                log.warning("pop3 %s: mailbox lock lost; closing", self.session_id)
                self._lock_lost = True
                if self._waiting and self.task is not None:
                    self.task.cancel()
                return

    async def _unlock(self) -> None:
        lock, self.lock = self.lock, None
        if lock is not None:
            try:
                await lock.release()
            except Exception as exc:  # it expires by itself
                log.warning("pop3 %s: lock not released: %s", self.session_id, exc)

    async def _finish(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._keeper
        await self._unlock()
        if self.server.connections is not None:
            self.server.connections.release(self.session_id)
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), CLOSE_WAIT_S)

    # --- policy --------------------------------------------------------------------------

    async def _connect_refusal(self, held: HeldConnections | None) -> str | None:
        query = PolicyQuery(stage="connect", session=self._policy_session(), held=held)
        with _tracer.start_as_current_span("pop3 connect"):
            decision = await self.server.policy.ask(query)
        if decision.accepted:
            table, limits = self.server.connections, decision.limits
            if table is not None and limits is not None and limits.exempt:
                # The exempt group is never limited: its sessions need not be counted.
                table.release(self.session_id)
            return None
        return f"[SYS/{'TEMP' if decision.code < 500 else 'PERM'}] {decision.message}"

    def _policy_session(self) -> PolicySession:
        return PolicySession(
            session_id=self.session_id,
            client_ip=self.peer[0],
            client_port=self.peer[1],
            listener=self.server.settings.name,
            tls=self.state.tls,
        )


def _buffered(reader: asyncio.StreamReader) -> bool:
    # StreamReader has no public way to ask; its buffer is a bytearray.
    buffer = getattr(reader, "_buffer", b"")
    return len(buffer) > 0
