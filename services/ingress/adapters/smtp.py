"""The SMTP protocol of one session: aiosmtpd's, with mailbus's greeting, replies and drain.

Policy at connect runs before the greeting (the connection already holding its
lease, so policy counts it); every reply gets an RFC 3463 enhanced status code
and every refusal is counted by stage and rule, up to `max_failed_commands`;
DATA is read in bounded memory; AUTH's SASL framing is spoken here, the
credentials judged by the handler; each session is one SERVER span whose
children are its stages. The listener's hooks (policy, acceptance) are in
`handler.py`, which sees a session only as `SmtpSession` (session.py).

aiosmtpd has no public way to do some of this, so the class leans on eight of
its private members. Each is touched in one place, marked "aiosmtpd private":
`_smtp_methods`, `_create_envelope`, `_getaddr`, `_handle_client`,
`_call_handler_hook`, `_strip_command_keyword`, and the stream's `_reader` and
`_writer`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import secrets
import ssl
import warnings
from collections.abc import Awaitable, Callable, Iterator
from typing import AnyStr

from aiosmtpd.proxy_protocol import get_proxy
from aiosmtpd.smtp import MISSING, SMTP, syntax
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from libs.common.contract.events import TlsInfo
from libs.common.contract.policy import PolicyDecision, SessionLimits
from libs.common.contract.policy import Session as PolicySession
from libs.common.runtime.telemetry import tracer
from services.ingress.adapters.data import read_message
from services.ingress.adapters.listener import Listener
from services.ingress.adapters.refusals import Refusals
from services.ingress.adapters.session import IngressEnvelope, SessionHooks
from services.ingress.core import dsn, replies, sasl
from services.ingress.core.data import DataAssembler, DataState
from services.ingress.core.errors import SaslError
from services.ingress.core.paths import split_path
from services.ingress.core.refusals import FAILED_COMMANDS_RULE, TOO_MANY_FAILURES

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

IDENT = "ESMTP mailbus"
SESSION_TIMEOUT_S = 300.0  # RFC 5321 section 4.5.3.2.7: at least five minutes
PROXY_HEADER_TIMEOUT_S = 10.0

Command = Callable[[str | None], Awaitable[None]]


class IngressSMTP(SMTP):
    def __init__(self, listener: Listener, hooks: SessionHooks) -> None:
        s = listener.settings
        tls_context = listener.tls_context
        with warnings.catch_warnings():
            # aiosmtpd warns of auth_required without auth_require_tls; on an implicit-TLS
            # listener the whole session is encrypted, so the warning does not apply.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            super().__init__(
                hooks,  # aiosmtpd finds its handle_* hooks on it
                hostname=s.hostname,
                ident=IDENT,
                enable_SMTPUTF8=True,
                data_size_limit=s.data_size_limit,
                tls_context=tls_context if s.tls == "starttls" else None,
                # Only a submission port may insist on TLS: an MX that demands it
                # loses mail from MTAs that cannot do it (RFC 3207 section 4).
                require_starttls=s.tls == "starttls" and s.require_auth,
                auth_required=s.require_auth,
                # On an implicit-TLS port every byte is already encrypted.
                auth_require_tls=s.tls != "implicit",
                timeout=SESSION_TIMEOUT_S,
                loop=asyncio.get_running_loop(),
            )
        self.listener = listener
        self.hooks = hooks
        self.settings = s
        self.sessions = listener.sessions
        self.session_id = secrets.token_hex(8)
        self.span: Span | None = None
        self._busy = 0
        self._greeting_pending = False
        self._in_helo = False
        self._close_after_reply = False
        self._proxied_peer: tuple[str, int] | None = None
        # The DSN parameters of the MAIL or RCPT being handled, as the client wrote them.
        self.dsn_parameters: tuple[str, ...] = ()
        self.refusals = Refusals(self.session_id, s.max_failed_commands)
        # aiosmtpd private: its command table. Wrapping each entry runs the drain and
        # the refusal accounting around every command without copying its command loop.
        self._smtp_methods = {
            name: self._command(name, method) for name, method in self._smtp_methods.items()
        }

    # --- aiosmtpd's extension points (private names, but meant to be overridden) -----

    def _create_envelope(self) -> IngressEnvelope:
        # aiosmtpd private: how it starts every transaction (connect, RSET, EHLO, DATA).
        return IngressEnvelope()

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd private: its path parser. The path as sent, for policy's RFC 5321
        # parser; see core/paths.py.
        return split_path(arg)

    def _end_transaction(self) -> None:
        """aiosmtpd's post-DATA state: a new, empty transaction."""
        self.envelope = IngressEnvelope()

    @property
    def _input(self) -> asyncio.StreamReader:
        # aiosmtpd private: the reader it reads commands from. The PROXY header and the
        # message of DATA must come out of the same buffer.
        reader: asyncio.StreamReader = self._reader
        return reader

    @property
    def _output(self) -> asyncio.StreamWriter:
        # aiosmtpd private: the writer `push` writes to, for the drain's reply (which
        # cannot wait for `push`) and for closing the stream when the client hangs up.
        writer: asyncio.StreamWriter = self._writer
        return writer

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.sessions.add(self)
        self.listener.metrics.session_opened()
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.sessions.discard(self)
        self.listener.metrics.session_closed()
        self.listener.uncount(self.session_id)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        # aiosmtpd private: the session's task. Connect-time policy and the PROXY header
        # come before aiosmtpd's greeting, which has no hook in front of it.
        if self.settings.proxy_protocol and not await self._read_proxy_header():
            self._close()
            return
        ip, port = self.peer
        self.refusals.client = ip
        await self.listener.count(self.session_id, ip)
        attributes: dict[str, str | int] = {
            "client.address": ip,
            "client.port": port,
            "mailbus.listener": self.settings.name,
            "mailbus.session_id": self.session_id,
        }
        span = _tracer.start_span("smtp session", kind=SpanKind.SERVER, attributes=attributes)
        self.span = span
        # QUIT and hang-ups cancel this task: the normal end of a session, not an error.
        with trace.use_span(
            span, end_on_exit=True, record_exception=False, set_status_on_exception=False
        ):
            refusal = await self._connect_refusal()
            if refusal is not None:
                span.set_attribute("mailbus.reply", refusal)
                await self.push(refusal)
                self._close()
                return
            self._greeting_pending = True
            await super()._handle_client()

    async def _connect_refusal(self) -> str | None:
        try:
            refusal = await self.hooks.on_connect(self)
        except Exception as exc:
            log.exception("session %s: at connect", self.session_id)
            if self.span is not None:
                self.span.record_exception(exc)
            self.refusals.note("internal_error")
            return replies.INTERNAL_ERROR_CLOSING
        if refusal is None and self.sessions.draining:
            return replies.SHUTTING_DOWN
        return refusal

    async def _read_proxy_header(self) -> bool:
        """HAProxy's PROXY v1/v2 header: the client's address, as the load balancer saw it."""
        try:
            data = await asyncio.wait_for(get_proxy(self._input), PROXY_HEADER_TIMEOUT_S)
        except TimeoutError:
            data = None
        if not data:
            log.warning("%s: no valid PROXY header; closing", self.peer[0])
            return False
        if data.src_addr is not None:  # None for the balancer's own health checks (LOCAL)
            self._proxied_peer = (str(data.src_addr), int(data.src_port or 0))
        return True

    async def push(self, status: AnyStr) -> None:
        if isinstance(status, bytes):  # AUTH challenges: 334, no enhanced code
            await super().push(status)
            return
        if self._greeting_pending:
            self._greeting_pending = False
            line = str(status)
        elif self._in_helo:
            line = str(status)
        else:
            # RFC 2034 section 3: every reply but the greeting and HELO/EHLO's has one.
            line = replies.enhance(str(status))
        limit_reached = self.refusals.sent(line)
        await super().push(line)
        if limit_reached and not self._close_after_reply:
            # As Postfix's smtpd_hard_error_limit: the last failure is answered, then 421.
            self._close_after_reply = True
            self.refusals.note(FAILED_COMMANDS_RULE)
            await self.push(TOO_MANY_FAILURES)
            self._close()

    async def handle_exception(self, error: Exception) -> str:
        # A bug or a lost NATS connection: the transaction is void and the client retries.
        log.exception("session %s: %s", self.session_id, type(error).__name__)
        if self.span is not None:
            self.span.record_exception(error)
        self._end_transaction()
        self.refusals.note("internal_error")
        return replies.INTERNAL_ERROR

    @syntax("DATA")
    async def smtp_DATA(self, arg: str) -> None:
        """aiosmtpd's DATA, reading the message through a bounded DataAssembler."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        assembler = DataAssembler(self.data_size_limit, self.line_length_limit)
        try:
            await read_message(self._input, assembler)
        except asyncio.CancelledError:
            self._output.close()  # the client hung up in the middle of the message
            raise
        # Only now, after the whole message was read (RFC 5321 section 4.2.5).
        if assembler.state is DataState.TOO_MUCH:
            self.refusals.note("max_message_size")
            self._end_transaction()
            await self.push(replies.too_big(self.data_size_limit or 0))
            return
        if assembler.state is DataState.TOO_LONG:
            self.refusals.note("line_too_long")
            self._end_transaction()
            await self.push(replies.LINE_TOO_LONG)
            return
        content = assembler.content()
        self.envelope.content = content
        self.envelope.original_content = content
        # aiosmtpd private: how it calls the handler's hook (handle_DATA).
        status = await self._call_handler_hook("DATA")
        self._end_transaction()
        await self.push("250 OK" if status is MISSING else status)

    async def smtp_HELO(self, hostname: str) -> None:
        await self._helo_reply(super().smtp_HELO(hostname))

    async def smtp_EHLO(self, hostname: str) -> None:
        # aiosmtpd grows class-wide limits at every EHLO of every session: ours are our own.
        self.command_size_limits = collections.defaultdict(lambda: self.command_size_limit)
        await self._helo_reply(super().smtp_EHLO(hostname))
        # RFC 3461: room for the DSN parameters (ORCPT alone may take 500).
        self.command_size_limits["MAIL"] += dsn.MAIL_LINE_EXTRA
        self.command_size_limits["RCPT"] += dsn.RCPT_LINE_EXTRA

    @syntax("MAIL FROM: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_MAIL(self, arg: str | None) -> None:
        await super().smtp_MAIL(self._take_dsn(arg, "FROM:", dsn.MAIL_KEYWORDS))

    @syntax("RCPT TO: <address>", extended=" [SP <mail-parameters>]")
    async def smtp_RCPT(self, arg: str | None) -> None:
        await super().smtp_RCPT(self._take_dsn(arg, "TO:", dsn.RCPT_KEYWORDS))

    def _take_dsn(self, arg: str | None, keyword: str, names: frozenset[str]) -> str | None:
        """The command without its DSN parameters, which go to `dsn_parameters` for the
        handler: aiosmtpd would refuse them and upper-case what ENVID and ORCPT say."""
        self.dsn_parameters = ()
        if arg is None or self.session is None or not self.session.extended_smtp:
            return arg  # after HELO, aiosmtpd refuses any parameter
        # aiosmtpd private: "FROM:"/"TO:" taken off as aiosmtpd itself does next.
        rest = self._strip_command_keyword(keyword, arg)
        if rest is None:
            return arg
        kept, self.dsn_parameters = dsn.extract(rest, names)
        return f"{keyword}{kept}"

    async def _helo_reply(self, reply: Awaitable[None]) -> None:
        self._in_helo = True
        try:
            await reply
        finally:
            self._in_helo = False

    # --- what the handler needs to know of the session -------------------------------

    @property
    def peer(self) -> tuple[str, int]:
        if self._proxied_peer is not None:
            return self._proxied_peer
        peer = self.session.peer if self.session else None
        if isinstance(peer, tuple) and len(peer) >= 2:
            return str(peer[0]), int(peer[1])
        return "", 0

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """Set after STARTTLS and on implicit-TLS ports alike (aiosmtpd's session.ssl is not)."""
        if self.transport is None:
            return None
        obj: ssl.SSLObject | None = self.transport.get_extra_info("ssl_object")
        return obj

    @property
    def tls_info(self) -> TlsInfo | None:
        obj = self.ssl_object
        if obj is None:
            return None
        cipher = obj.cipher()
        return TlsInfo(version=obj.version() or "", cipher=cipher[0] if cipher else "")

    @property
    def authenticated_as(self) -> str | None:
        if self.session is None or not self.session.authenticated:
            return None
        data = self.session.auth_data
        return None if data is None else str(data)

    def policy(self) -> PolicySession:
        ip, port = self.peer
        return PolicySession(
            session_id=self.session_id,
            client_ip=ip,
            client_port=port,
            listener=self.settings.name,
            helo=(self.session.host_name or "") if self.session else "",
            tls=self.ssl_object is not None,
            auth_user=self.authenticated_as,
        )

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[Span]:
        """A child span of the session; a session inside a stage is not idle."""
        self._busy += 1
        try:
            with _tracer.start_as_current_span(f"smtp {name}") as span:
                yield span
        finally:
            self._busy -= 1

    def apply_limits(self, limits: SessionLimits | None) -> None:
        """What policy set at connect for this session; None keeps the listener's defaults."""
        if limits is None:
            return
        self.data_size_limit = limits.max_message_size or None
        self.refusals.max_failed_commands = limits.max_failed_commands
        if limits.exempt:
            # Connections of the exempt group are never limited: no need to count them.
            self.listener.uncount(self.session_id)

    def note_refusal(self, rule: str) -> None:
        self.refusals.note(rule)

    def refuse(self, decision: PolicyDecision) -> str:
        """Policy's reply verbatim; `disconnect` also ends the session after it."""
        self.refusals.note(decision.rule)
        if decision.action == "disconnect":
            self._close_after_reply = True
            return replies.closing_reply(decision.code, decision.status, decision.message)
        return decision.smtp_reply

    # --- AUTH: the SASL framing (RFC 4954) ------------------------------------------

    async def read_credentials(self, mechanism: str, initial: str | None) -> tuple[str, str] | None:
        """(username, password) for the handler to check; None when the client was already
        answered (bad base64, `*` to abort, ...)."""
        responses: list[bytes] = []
        try:
            for challenge in sasl.challenges(mechanism):
                if initial is not None:
                    responses.append(sasl.initial_response(initial))
                    initial = None
                    continue
                answer = await self.challenge_auth(challenge)
                if answer is MISSING:
                    return None  # aiosmtpd has answered it
                responses.append(answer)
            return sasl.credentials(mechanism, responses)
        except SaslError as err:
            await self.push(err.reply)
            return None

    # --- drain -----------------------------------------------------------------------

    def _command(self, name: str, method: Command) -> Command:
        """Run one command, then end the session if policy or a drain asks for it."""

        @functools.wraps(method)
        async def run(arg: str | None) -> None:
            self.refusals.command(name)
            if self.sessions.draining and name == "MAIL":
                await self._shut_down()
                return
            self._busy += 1
            try:
                await method(arg)
            finally:
                self._busy -= 1
                # Replies outside any command (an unknown one, a line too long) count here.
                self.refusals.command("session")
            if self._close_after_reply:
                self._close()
            elif self.sessions.draining and self.idle:
                await self._shut_down()

        return run

    @property
    def idle(self) -> bool:
        """Between transactions and not working on a command."""
        return self._busy == 0 and not (self.envelope and self.envelope.mail_from)

    def close_if_idle(self) -> None:
        """At drain: an idle session ends now; a busy one after its transaction."""
        if self.idle and self.span is not None and not self._greeting_pending:
            if self.transport is not None and not self.transport.is_closing():
                self._output.write(replies.SHUTTING_DOWN.encode() + b"\r\n")
            self._close()

    async def _shut_down(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            await self.push(replies.SHUTTING_DOWN)
        self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def abort(self) -> None:
        transport = self.transport
        if isinstance(transport, asyncio.Transport):
            transport.abort()
        elif transport is not None:
            transport.close()
