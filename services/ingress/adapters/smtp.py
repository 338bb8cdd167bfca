"""The SMTP protocol of one session: aiosmtpd's, with mailbus's greeting, replies and drain.

Policy at connect runs before the greeting (the connection already counted in
the instance's table, its count sent along, so policy counts it); every reply
gets an RFC 3463 enhanced status code and every refusal is counted by stage
and rule, up to `max_failed_commands`; DATA is read in bounded memory; AUTH's
SASL framing is spoken here, the credentials judged by the handler; each
session is one SERVER span whose children are its stages. The listener's
hooks (policy, acceptance) are in
`handler.py`, which sees a session only as `SmtpSession` (session.py).

The command loop is mailbus's own (`_serve`), not aiosmtpd's: aiosmtpd's
resets its one timer only on a recognized command, closes after five unknown
ones whatever `max_failed_commands` says, decodes what is not UTF-8 with
surrogates that later fail deep inside, and knows nothing of RFC 2920's
synchronization rules. Ours reads each line against `command_timeout`, checks
it in `core/commands.py` before anything looks at it, and then calls
aiosmtpd's `smtp_*` methods as aiosmtpd would.

aiosmtpd has no public way to do some of this, so the class leans on its
private members. Each is touched in one place, marked "aiosmtpd private":
`_smtp_methods`, `_create_envelope`, `_getaddr`, `_handle_client`,
`_call_handler_hook`, `_strip_command_keyword`, `_reset_timeout`,
`_original_transport`, `_tls_protocol`, `_tls_handshake_okay`, and the stream's
`_reader` and `_writer`.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import secrets
import ssl
import warnings
from asyncio import sslproto
from collections.abc import Awaitable, Callable, Iterator
from typing import AnyStr

from aiosmtpd.proxy_protocol import get_proxy
from aiosmtpd.smtp import ALLOWED_BEFORE_STARTTLS, MISSING, SMTP, syntax
from opentelemetry import trace
from opentelemetry.trace import Span, SpanKind

from libs.common.contract.events import TlsInfo
from libs.common.contract.policy import HeldConnections, PolicyDecision, SessionLimits
from libs.common.contract.policy import Session as PolicySession
from libs.common.runtime.telemetry import tracer
from services.ingress.adapters import librarylog, smtpsetup, spool
from services.ingress.adapters.data import (
    LineTooLong,
    ReadTimeout,
    buffered,
    read_chunk,
    read_line,
    read_message,
)
from services.ingress.adapters.listener import Listener
from services.ingress.adapters.refusals import Refusals
from services.ingress.adapters.session import IngressEnvelope, SessionHooks
from services.ingress.core import commands, dsn, replies, sasl
from services.ingress.core.data import ChunkAssembler, DataAssembler, DataState
from services.ingress.core.deadlines import TransferClock
from services.ingress.core.errors import SaslError
from services.ingress.core.paths import split_path
from services.ingress.core.refusals import FAILED_COMMANDS_RULE, TOO_MANY_FAILURES
from services.ingress.core.scan import ContentScan

log = logging.getLogger(__name__)
_tracer = tracer(__name__)
librarylog.install()
smtpsetup.install()

IDENT = "ESMTP mailbus"
SESSION_TIMEOUT_S = 300.0  # aiosmtpd's own timer, which `_reset_timeout` keeps off
PROXY_HEADER_TIMEOUT_S = 10.0
# RCPTs decided with their MAIL in one policy request at most (the rest: one by one).
MAX_PIPELINED_RCPTS = 100

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
        self._opened = False
        self._junk = 0
        # BDAT (RFC 3030): the transaction's chunks so far; None between transactions.
        self._chunks: ChunkAssembler | None = None
        self._chunk_spool: spool.Spool | None = None
        self._chunk_clock: TransferClock | None = None
        # The DSN parameters of the MAIL or RCPT being handled, as the client wrote them.
        self.dsn_parameters: tuple[str, ...] = ()
        # This instance's open connections from the client, this one included (connect).
        self.held: HeldConnections | None = None
        self.refusals = Refusals(self.session_id, s.max_failed_commands)

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
        self._forget_chunks()

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
        # aiosmtpd calls this again once a STARTTLS handshake is done: one session still.
        if not self._opened:
            self._opened = True
            self.sessions.add(self)
            self.listener.metrics.session_opened()
        super().connection_made(transport)

    def _reset_timeout(self, duration: float | None = None) -> None:
        # aiosmtpd private: its single session timer. The deadlines are `_serve`'s, per
        # read; aiosmtpd only needs a handle it can cancel.
        if self._timeout_handle is not None:
            self._timeout_handle.cancel()
        self._timeout_handle = self.loop.call_later(SESSION_TIMEOUT_S * 1000, lambda: None)

    def connection_lost(self, error: Exception | None) -> None:
        self.sessions.discard(self)
        self.listener.metrics.session_closed()
        self.listener.uncount(self.session_id)
        super().connection_lost(error)

    async def _handle_client(self) -> None:
        # aiosmtpd private: the session's task, whose exception nobody retrieves.
        try:
            await self._session()
        except ConnectionError:
            # A client that resets before its greeting, or while it is sent: no error.
            self._close()

    async def _session(self) -> None:
        """The PROXY header, counting, implicit TLS and connect-time policy, then the
        greeting and the command loop."""
        if self.settings.proxy_protocol and not await self._read_proxy_header():
            self._close()
            return
        ip, port = self.peer
        self.refusals.client = ip
        self.held = self.listener.count(self.session_id, ip)
        # Implicit TLS starts only now, once the connection is counted: a flood of
        # connections that never finish a handshake is held to max_connections_per_ip.
        if self.settings.tls == "implicit" and not await self._start_tls():
            return
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
            if not await self._wait_before_greeting():
                return
            self._greeting_pending = True
            await self._serve()

    async def _wait_before_greeting(self) -> bool:
        """listeners[].pregreet_wait: a client that talks first is no SMTP client."""
        wait = self.settings.pregreet_wait
        if wait <= 0:
            return True
        try:
            early = await asyncio.wait_for(self._input.read(1), wait)
        except TimeoutError:
            return True
        if early:
            self.refusals.note("pregreet")
            await self.push(commands.EARLY_TALKER)
        self._close()
        return False

    async def _serve(self) -> None:
        """The command loop: one line at a time, each checked, then aiosmtpd's method."""
        await self.push(f"220 {self.hostname} {IDENT}")
        try:
            while self.transport is not None and not self.transport.is_closing():
                try:
                    line = await read_line(self._input, self.settings.deadlines.command_timeout)
                except ReadTimeout:
                    await self._time_out()
                    return
                except LineTooLong:
                    await self.push("500 5.5.6 Error: line too long")
                    continue
                if not line:
                    self._close()  # the client left without QUIT
                    return
                await self._one_command(line.rstrip(b"\r\n"))
        except ReadTimeout:
            await self._time_out()
        except ConnectionError:
            pass  # a reset is how many clients end a session: nothing to retrieve or report
        finally:
            # Every way out (QUIT, a hang-up, which cancels this task, a limit) ends with
            # the connection closed, and so uncounted.
            self._close()

    async def _one_command(self, line: bytes) -> None:
        command = commands.parse(line)
        if isinstance(command, str):
            await self.push(command)
            return
        assert self.session is not None
        if not self.session.extended_smtp and buffered(self._input):
            # RFC 2920: without PIPELINING offered (no EHLO yet), one command per write.
            await self._synchronization_error()
            return
        verb, arg = command.verb, command.arg
        limit = (
            self.command_size_limits[verb]
            if self.session.extended_smtp
            else self.command_size_limit
        )
        if len(line) > limit:
            await self.push("500 5.5.6 Error: line too long")
            return
        # aiosmtpd private: what its own loop checks before every command.
        if not self._tls_handshake_okay and verb != "QUIT":
            await self.push("554 5.7.0 Command refused due to lack of security")
            return
        if self.require_starttls and not self._tls_protocol and verb not in ALLOWED_BEFORE_STARTTLS:
            await self.push("530 5.7.0 Must issue a STARTTLS command first")
            return
        if verb in commands.JUNK_COMMANDS and not await self._junk_allowed():
            return
        # aiosmtpd private: its command table (smtp_* methods by verb).
        method = self._smtp_methods.get(verb)
        if method is None:
            self.refusals.command("unknown")
            self.refusals.note("unknown_command")
            await self.push(commands.UNKNOWN_COMMAND)
            return
        try:
            await self._command(verb, method, arg)
        except (ReadTimeout, ConnectionError, asyncio.CancelledError):
            raise
        except Exception as error:
            await self.push(await self.handle_exception(error))

    async def _junk_allowed(self) -> bool:
        self._junk += 1
        limit = self.settings.max_junk_commands
        if not limit or self._junk <= limit:
            return True
        self.refusals.note("max_junk_commands")
        await self.push(commands.TOO_MANY_JUNK)
        self._close()
        return False

    async def _time_out(self) -> None:
        self.refusals.note("timeout")
        if self.transport is not None and not self.transport.is_closing():
            await self.push(commands.TIMEOUT)
        self._close()

    async def _synchronization_error(self) -> None:
        self.refusals.note("pipelining")
        await self.push(commands.SYNCHRONIZATION)
        self._close()

    # --- TLS: implicit and STARTTLS, each bounded by tls_handshake_timeout ------------

    async def _start_tls(self) -> bool:
        """Put TLS under the session as aiosmtpd's STARTTLS does; False if the handshake
        failed or took too long (the connection is closed, one WARNING line logged)."""
        context = self.listener.tls_context
        assert context is not None and self.transport is not None
        waiter: asyncio.Future[None] = self.loop.create_future()
        # aiosmtpd private: the TLS layer and the plain transport under it, which its
        # connection_made and connection_lost look for.
        self._tls_protocol = sslproto.SSLProtocol(
            self.loop, self, context, waiter, server_side=True
        )
        self._original_transport = self.transport
        self._original_transport.set_protocol(self._tls_protocol)
        self.transport = self._tls_protocol._app_transport
        self._tls_protocol.connection_made(self._original_transport)
        # On an implicit-TLS port the ClientHello may have come while the connection was
        # being counted: it sits in the command reader, and belongs to the TLS layer.
        early = bytes(self._input._buffer)  # type: ignore[attr-defined]
        if early:
            self._input._buffer.clear()  # type: ignore[attr-defined]
            into = self._tls_protocol.get_buffer(len(early))
            into[: len(early)] = early
            self._tls_protocol.buffer_updated(len(early))
        try:
            await asyncio.wait_for(waiter, self.settings.tls_handshake_timeout)
        except TimeoutError:
            self._tls_failed("tls_timeout", "handshake took too long")
            return False
        except (ssl.SSLError, OSError, EOFError) as exc:
            self._tls_failed("tls_failed", f"{type(exc).__name__}: {exc}")
            return False
        return True

    def _tls_failed(self, rule: str, why: str) -> None:
        log.warning(
            "session %s: TLS with %s failed: %s",
            self.session_id,
            self.peer[0],
            commands.printable(why),
        )
        self.refusals.stage = "tls"
        self.refusals.count(rule)
        if self._original_transport is not None:
            self._original_transport.close()
        self._close()

    async def smtp_STARTTLS(self, arg: str | None) -> None:
        if self.ssl_object is not None:
            # RFC 3207 section 4: no second TLS layer over the first.
            await self.push("503 5.5.1 Error: TLS already active")
            return
        if arg:
            await self.push("501 5.5.4 Syntax: STARTTLS")
            return
        if not self.tls_context:
            await self.push("454 4.7.0 TLS not available")
            return
        await self.push("220 2.0.0 Ready to start TLS")
        await self._start_tls()

    @syntax("AUTH <mechanism>")
    async def smtp_AUTH(self, arg: str | None) -> None:
        if self.envelope is not None and self.envelope.mail_from:
            # RFC 4954 section 4: not inside a mail transaction.
            await self.push("503 5.5.1 Error: AUTH not allowed during a mail transaction")
            return
        await super().smtp_AUTH(arg)

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
        # No reply carries a control character of the client's back to it (or to a log).
        line = commands.printable(line)
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
    async def smtp_DATA(self, arg: str | None) -> None:
        """aiosmtpd's DATA, the message read through a DataAssembler into a spool file."""
        if await self.check_helo_needed():
            return
        if await self.check_auth_needed("DATA"):
            return
        assert self.envelope is not None
        if self._chunks is not None:
            await self.push("503 5.5.1 Error: DATA after BDAT")
            return
        if not self.envelope.rcpt_tos:
            await self.push("503 Error: need RCPT command")
            return
        if arg:
            await self.push("501 Syntax: DATA")
            return
        if buffered(self._input):
            # RFC 2920 section 3.1: the message only after the 354 (reject_unauth_pipelining).
            await self._synchronization_error()
            return
        await self.push("354 End data with <CR><LF>.<CR><LF>")
        body = spool.Spool()
        try:
            assembler = DataAssembler(self.data_size_limit, self.line_length_limit, body)
            try:
                await read_message(self._input, assembler, self._transfer_clock())
            except asyncio.CancelledError:
                self._output.close()  # the client hung up in the middle of the message
                raise
            except ReadTimeout:
                await self._time_out()
                return
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
            await self._deliver(body, assembler.scan)
        finally:
            body.release()

    @syntax("BDAT <size> [LAST]")
    async def smtp_BDAT(self, arg: str | None) -> None:
        """RFC 3030 CHUNKING: the chunk's octets are read whatever the answer, and never
        as commands; the message is judged whole after BDAT LAST."""
        size_text, _, last_text = (arg or "").partition(" ")
        last = last_text.strip().upper() == "LAST"
        if not commands.ascii_number(size_text) or (last_text.strip() and not last):
            # Without a size the chunk's end is unknown: nothing more can be read safely.
            await self.push("501 5.5.4 Syntax: BDAT <size> [LAST]")
            self._close()
            return
        size = int(size_text)
        refusal = await self._bdat_refusal()
        clock = self._chunk_clock or self._transfer_clock()
        if refusal is not None:
            try:
                await read_chunk(self._input, size, clock, lambda _piece: None)
            except ReadTimeout:
                await self._time_out()
                return
            await self.push(refusal)
            return
        if self._chunks is None:
            self._chunk_spool = spool.Spool()
            self._chunks = ChunkAssembler(self.data_size_limit, self._chunk_spool)
            self._chunk_clock = clock
        chunks, body = self._chunks, self._chunk_spool
        assert body is not None
        try:
            await read_chunk(self._input, size, clock, chunks.feed)
            if not last:
                await self.push(f"250 2.0.0 {size} octets received")
                return
            chunks.finish()
            self._forget_chunks()
            if chunks.state is DataState.TOO_MUCH:
                self.refusals.note("max_message_size")
                self._end_transaction()
                await self.push(replies.too_big(self.data_size_limit or 0))
                return
            await self._deliver(body, chunks.scan)
        except ReadTimeout:
            self._forget_chunks()
            await self._time_out()
        except BaseException:
            self._forget_chunks()
            raise
        finally:
            if self._chunk_spool is None:
                body.release()

    async def _bdat_refusal(self) -> str | None:
        assert self.session is not None and self.envelope is not None
        if not self.session.host_name:
            return "503 5.5.1 Error: send EHLO first"
        if self.settings.require_auth and not self.session.authenticated:
            return "530 5.7.0 Authentication required"
        if not self.envelope.rcpt_tos:
            return "503 5.5.1 Error: need RCPT command"
        return None

    def _forget_chunks(self) -> None:
        self._chunks = None
        self._chunk_spool = None
        self._chunk_clock = None

    def _transfer_clock(self) -> TransferClock:
        return TransferClock(self.settings.deadlines, self.loop.time())

    async def _deliver(self, body: spool.Spool, scan: ContentScan) -> None:
        """The whole message is in `body`: the handler's DATA hook decides and replies."""
        assert isinstance(self.envelope, IngressEnvelope)
        self.envelope.spool = body
        self.envelope.scan = scan
        # aiosmtpd private: how it calls the handler's hook (handle_DATA).
        status = await self._call_handler_hook("DATA")
        self._end_transaction()
        await self.push("250 OK" if status is MISSING else status)

    def _set_rset_state(self) -> None:
        # aiosmtpd's RSET and EHLO: a BDAT transaction in progress ends with them.
        chunks = getattr(self, "_chunk_spool", None)
        if chunks is not None:
            chunks.release()
            self._forget_chunks()
        super()._set_rset_state()  # type: ignore[no-untyped-call]

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
        if arg is not None:
            refusal = _mail_refusal(arg)
            if refusal is not None:
                await self.push(refusal)
                return
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

    def pipelined_rcpts(self) -> tuple[str, ...]:
        """The recipients of the RCPT commands already buffered behind the MAIL being
        handled (RFC 2920), for policy to decide in the same request.

        Only lines that will surely reach policy as they stand are taken, in order, up
        to the first that might not: complete, `RCPT TO:<path>` with no parameters, a
        well-formed ASCII path within the line limit. Anything else is asked when its turn
        comes, as before. (Policy stops where the failed-command limit would close the
        session: `refusals_left`.)
        """
        if self.session is None or not self.session.extended_smtp:
            return ()
        room = MAX_PIPELINED_RCPTS
        found: list[str] = []
        # asyncio private (as `buffered`): the bytes the client sent that no read took yet.
        pending = bytes(self._input._buffer)  # type: ignore[attr-defined]
        for raw in pending.split(b"\n")[:-1]:  # the last piece has no line break yet
            if len(found) >= room:
                break
            address = self._plain_rcpt(raw.rstrip(b"\r"))
            if address is None:
                break
            found.append(address)
        return tuple(found)

    @property
    def refusals_left(self) -> int:
        """Refused commands before the session closes; 0: no limit."""
        limit = self.refusals.max_failed_commands
        return max(1, limit - self.refusals.failed) if limit else 0

    def _plain_rcpt(self, line: bytes) -> str | None:
        if not line.isascii() or len(line) > self.command_size_limits["RCPT"]:
            return None
        command = commands.parse(line)
        if isinstance(command, str) or command.verb != "RCPT" or command.arg is None:
            return None
        # aiosmtpd private: "TO:" taken off as its smtp_RCPT does.
        rest = self._strip_command_keyword("TO:", command.arg)
        if rest is None or not rest.strip().startswith("<"):
            return None
        address, params = split_path(rest)
        if params or not address or address.startswith("<") or address == "<>":
            return None
        return address

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

    async def _command(self, name: str, method: Command, arg: str | None) -> None:
        """Run one of aiosmtpd's `smtp_*` methods (`_smtp_methods`, aiosmtpd private),
        then end the session if policy or a drain asks for it. Around the call here,
        in our own loop, rather than by wrapping every entry of the table for every
        session: that cost about 3 % of ingress's CPU under an r1 load."""
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


def _mail_refusal(arg: str) -> str | None:
    """What MAIL's own rules refuse before aiosmtpd reads the command."""
    path, _, parameters = arg.partition(">")
    if not commands.size_parameter_ok(parameters):
        return commands.NOT_A_NUMBER
    words = {word.upper() for word in parameters.split()}
    if not path.isascii() and "SMTPUTF8" not in words:
        return commands.NON_ASCII_ADDRESS  # RFC 6531 section 3.4
    return None
