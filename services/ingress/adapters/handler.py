"""aiosmtpd hooks of one listener: ask policy at each stage, then accept or relay the refusal.

One handler serves every session of its listener (listener.py); what belongs
to a session lives on the session, which the handler sees only as
`SmtpSession` (session.py), and what belongs to a transaction on its envelope,
so RSET, EHLO and the end of DATA clear it the way aiosmtpd does. AUTH's SASL
exchange is the session's; whether the credentials let the client in is
decided here, by policy.
"""

from __future__ import annotations

import asyncio
import logging

from aiosmtpd.smtp import Session
from opentelemetry.trace import Span

from libs.common.contract.antispam import AntispamResults
from libs.common.contract.events import Client, MessageReceived, Recipient
from libs.common.contract.ids import new_queue_id
from libs.common.contract.policy import PolicyDecision, PolicyQuery
from libs.common.mail import maillines
from libs.common.mail.submission import StoreError
from libs.common.runtime import maillog
from libs.common.runtime.telemetry import current_traceparent
from services.ingress.adapters import spool
from services.ingress.adapters.listener import Listener
from services.ingress.adapters.session import IngressEnvelope, SmtpSession
from services.ingress.core import antispam, dsn, replies
from services.ingress.core.errors import DsnSyntaxError
from services.ingress.core.received import received_header, with_protocol

log = logging.getLogger(__name__)


class IngressHandler:
    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.settings = listener.settings

    async def on_connect(self, server: SmtpSession) -> str | None:
        """None to greet; otherwise the reply to send before closing."""
        with server.stage("connect") as span:
            query = PolicyQuery(stage="connect", session=server.policy(), held=server.held)
            decision = await self._ask(query, span)
        if decision.accepted:
            server.apply_limits(decision.limits)
            return None
        server.note_refusal(decision.rule)
        return replies.closing_reply(decision.code, decision.status, decision.message)

    async def handle_EHLO(
        self,
        server: SmtpSession,
        session: Session,
        envelope: IngressEnvelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        """aiosmtpd advertises `SIZE n` for a limit; with none, RFC 1870 still has `SIZE`.
        DSN (RFC 3461) goes before the last line."""
        session.host_name = hostname
        if not server.data_size_limit and not any(r[4:].startswith("SIZE") for r in responses):
            responses.insert(1, "250-SIZE")
        responses.insert(len(responses) - 1, "250-DSN")
        # RFC 2920, 2034 and 3030: all three are spoken by the session (smtp.py).
        for extension in ("PIPELINING", "ENHANCEDSTATUSCODES", "CHUNKING"):
            responses.insert(len(responses) - 1, f"250-{extension}")
        return responses

    async def handle_MAIL(
        self,
        server: SmtpSession,
        session: Session,
        envelope: IngressEnvelope,
        address: str,
        mail_options: list[str],
    ) -> str:
        try:
            params = dsn.parse_mail(server.dsn_parameters)
        except DsnSyntaxError as exc:
            return _dsn_refusal(server, exc)
        query = PolicyQuery(
            stage="mail",
            session=server.policy(),
            mail_from=_null_sender(address),
            size=_size_param(mail_options),
            rcpts=server.pipelined_rcpts(),
            refusals_left=server.refusals_left,
        )
        with server.stage("mail") as span:
            decision = await self._ask(query, span)
        if not decision.accepted:
            return server.refuse(decision)
        # Policy's canonical form ("" for the null sender, which stays "<>" because
        # aiosmtpd tests mail_from for truth).
        envelope.mail_from = decision.canonical or address
        envelope.mail_options.extend(mail_options)
        envelope.policy_rules = [decision.rule]
        envelope.dsn = params
        envelope.antispam = decision.antispam
        envelope.prefetched = _prefetched(query, decision, envelope)
        return "250 2.1.0 Ok"

    async def handle_RCPT(
        self,
        server: SmtpSession,
        session: Session,
        envelope: IngressEnvelope,
        address: str,
        rcpt_options: list[str],
    ) -> str:
        try:
            params = dsn.parse_rcpt(server.dsn_parameters)
        except DsnSyntaxError as exc:
            return _dsn_refusal(server, exc)
        query = PolicyQuery(
            stage="rcpt",
            session=server.policy(),
            mail_from=_null_sender(envelope.mail_from or ""),
            rcpt=address,
            rcpt_count=envelope.rcpt_commands,
        )
        with server.stage("rcpt") as span:
            decision = self._take_prefetched(envelope, query, span)
            if decision is None:
                decision = await self._ask(query, span)
        if not decision.accepted:
            return server.refuse(decision)
        # Where the mail goes is policy's canonical address (an alias resolved to its
        # account); the same mailbox named twice gets the message once, with the DSN
        # parameters of its first RCPT.
        canonical = decision.canonical or address
        envelope.rcpt_commands += 1
        if canonical not in envelope.rcpt_tos:
            envelope.rcpt_tos.append(canonical)
            envelope.rcpt_sent.append(address)
            envelope.rcpt_dsn.append(params)
            envelope.policy_rules.append(decision.rule)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 Ok"

    async def handle_DATA(
        self, server: SmtpSession, session: Session, envelope: IngressEnvelope
    ) -> str:
        content, scan = envelope.spool, envelope.scan
        assert content is not None and scan is not None  # the session spooled the message
        bare = scan.refusal()
        if bare is not None:
            server.note_refusal("smuggling")
            log.warning(
                "session %s: message from %s refused: bare line break or NUL (smuggling attempt?)",
                server.session_id,
                server.peer[0],
            )
            return bare
        # A client's Authentication-Results in our name would pass for our own verdict.
        header, rest = _header_section(content)
        header = antispam.without_forged_results(header, self.settings.hostname)
        query = PolicyQuery(
            stage="data",
            session=server.policy(),
            mail_from=_null_sender(envelope.mail_from or ""),
            rcpt_count=len(envelope.rcpt_tos),
            size=scan.size,
            received_headers=scan.received_headers,
        )
        qid = new_queue_id()
        with server.stage("data") as span:
            received = self._received(server, session, envelope, qid)
            # Only a message small enough for spamd is ever read whole (_to_scan).
            small = scan.size <= self.settings.scan_max_size
            whole = header + content.read_from(rest) if small else b""
            decision = await self._ask(query, span, self._to_scan(query, envelope, received, whole))
            if not decision.accepted:
                return server.refuse(decision)
            span.set_attribute("mailbus.queue_id", qid)
            results = antispam.merged(envelope.antispam, decision.antispam)
            prefix = antispam.trace_headers(results, self.settings.hostname) + received + header
            size = len(prefix) + content.size - rest
            event = self._event(server, session, envelope, qid, size, decision.rule, results)
            # The revision that accepted it: "why was this accepted" answerable later.
            event = event.model_copy(update={"config_revision": decision.config_revision})
            # Shielded: a client hanging up now must not cut between the body and its event.
            try:
                accepting = spool.accept(self.listener.store, content, rest, prefix, event)
                await asyncio.shield(self.listener.sessions.track(accepting))
            except StoreError:
                server.note_refusal("queue_unavailable")
                return replies.QUEUE_UNAVAILABLE
        self.listener.metrics.message_accepted(size)
        maillog.emit(maillines.accepted(qid, server.peer[0], event.auth_user))
        return replies.accepted(qid)

    async def handle_AUTH(
        self, server: SmtpSession, session: Session, envelope: IngressEnvelope, args: list[str]
    ) -> str | None:
        """PLAIN and LOGIN, the credentials checked by policy; None when already answered."""
        mechanism = args[0].upper()
        credentials = await server.read_credentials(mechanism, args[1] if len(args) > 1 else None)
        if credentials is None:
            return None
        username, password = credentials
        query = PolicyQuery(
            stage="auth",
            session=server.policy(),
            mechanism=mechanism,
            username=username,
            password=password,
        )
        with server.stage("auth") as span:
            decision = await self._ask(query, span)
        if not decision.accepted:
            return server.refuse(decision)
        session.authenticated = True
        # aiosmtpd annotates auth_data as None, yet it is free-form by design.
        session.auth_data = decision.canonical or username  # type: ignore[assignment]
        return "235 2.7.0 Authentication successful"

    def _to_scan(
        self, query: PolicyQuery, envelope: IngressEnvelope, received: bytes, content: bytes
    ) -> bytes | None:
        """The message as policy's spamd is to see it, when it will scan one: spamd set,
        the message within antispam.spamd_max_size, the sender not skipped at MAIL."""
        limit = self.settings.scan_max_size
        skipped = envelope.antispam is not None and envelope.antispam.skipped
        if not limit or skipped or (query.size or 0) > limit:
            return None
        return received + content

    @staticmethod
    def _take_prefetched(
        envelope: IngressEnvelope, query: PolicyQuery, span: Span
    ) -> PolicyDecision | None:
        """Policy's answer to exactly this query, if it came with MAIL's; anything else
        drops the rest of them (they were decided for queries this session no longer asks)."""
        if not envelope.prefetched:
            return None
        expected, decision = envelope.prefetched.pop(0)
        if expected != query:
            envelope.prefetched.clear()
            return None
        span.set_attribute("mailbus.policy_rule", decision.rule)
        if not decision.accepted:
            span.set_attribute("mailbus.reply", decision.smtp_reply)
        return decision

    async def _ask(
        self, query: PolicyQuery, span: Span, message: bytes | None = None
    ) -> PolicyDecision:
        """Called inside the stage's span, so the request carries it as its trace parent."""
        extra = self.settings.scan_seconds if message is not None else 0.0
        decision = await self.listener.policy.ask(query, message, extra)
        span.set_attribute("mailbus.policy_rule", decision.rule)
        if not decision.accepted:
            span.set_attribute("mailbus.reply", decision.smtp_reply)
        return decision

    def _received(
        self, server: SmtpSession, session: Session, envelope: IngressEnvelope, qid: str
    ) -> bytes:
        hidden = self.settings.hidden_clients
        tls = server.tls_info
        return received_header(
            helo=session.host_name or "",
            client_ip=server.peer[0],
            hide_client=hidden is not None and hidden.contains(server.peer[0]),
            hostname=self.settings.hostname,
            protocol=with_protocol(
                extended=session.extended_smtp,
                tls=server.tls_info is not None,
                authenticated=bool(session.authenticated),
                utf8=envelope.smtp_utf8,
            ),
            queue_id=qid,
            recipients=envelope.rcpt_sent,
            now=self.listener.clock(),
            tls=None if tls is None else (tls.version, tls.cipher),
        )

    def _event(
        self,
        server: SmtpSession,
        session: Session,
        envelope: IngressEnvelope,
        qid: str,
        size: int,
        data_rule: str,
        results: AntispamResults | None = None,
    ) -> MessageReceived:
        ip, port = server.peer
        helo = session.host_name or ""
        return MessageReceived(
            event_id=f"{qid}.received",
            queue_id=qid,
            mail_from=_null_sender(envelope.mail_from or ""),
            recipients=tuple(
                _recipient(a, sent, params)
                for a, sent, params in zip(
                    envelope.rcpt_tos, envelope.rcpt_sent, envelope.rcpt_dsn, strict=True
                )
            ),
            size=size,
            client=Client(ip=ip, port=port, helo=helo, listener=self.settings.name),
            tls=server.tls_info,
            auth_user=server.authenticated_as,
            # In stage order, each rule once: why this message was let in.
            policy_rules=tuple(dict.fromkeys([*envelope.policy_rules, data_rule])),
            smtputf8=envelope.smtp_utf8,
            envid=envelope.dsn.envid,
            ret=envelope.dsn.ret,
            trace_parent=current_traceparent(),
            antispam=results,
        )


def _recipient(address: str, sent: str, params: dsn.RcptParams) -> Recipient:
    """RFC 3461 section 4.2: the client's ORCPT if it gave one; else a rewritten recipient
    keeps the address the client wrote as its ORCPT."""
    orcpt = params.orcpt
    if orcpt is None and address.lower() != sent.lower():
        orcpt = f"{'rfc822' if sent.isascii() else 'utf-8'};{sent}"
    return Recipient(address=address, orcpt=orcpt, notify=params.notify)


# The header section is read into memory to drop forged Authentication-Results; one
# longer than this (rare, and bounded by max_message_size) is read whole.
HEADER_LIMIT = 256 * 1024


def _header_section(content: spool.Spool) -> tuple[bytes, int]:
    """The message's header section, without its empty line, and where the rest starts."""
    head = content.head(HEADER_LIMIT)
    end = antispam.header_end(head)
    if end == len(head) and content.size > len(head):
        head = content.head(content.size)
        end = antispam.header_end(head)
    return head[:end], end


def _prefetched(
    mail: PolicyQuery, decision: PolicyDecision, envelope: IngressEnvelope
) -> list[tuple[PolicyQuery, PolicyDecision]]:
    """Each pipelined RCPT's decision beside the query ingress would send for it, made
    as handle_RCPT makes it (the canonical sender; the recipients accepted so far)."""
    found: list[tuple[PolicyQuery, PolicyDecision]] = []
    accepted = 0
    for rcpt, answer in zip(mail.rcpts, decision.rcpts or (), strict=False):
        query = PolicyQuery(
            stage="rcpt",
            session=mail.session,
            mail_from=_null_sender(envelope.mail_from or ""),
            rcpt=rcpt,
            rcpt_count=envelope.rcpt_commands + accepted,
        )
        found.append((query, answer))
        accepted += answer.accepted
    return found


def _dsn_refusal(server: SmtpSession, error: DsnSyntaxError) -> str:
    server.note_refusal("dsn_syntax")
    return error.reply


def _null_sender(address: str) -> str:
    return "" if address == "<>" else address


def _size_param(options: list[str]) -> int | None:
    for option in options:
        key, _, value = option.partition("=")
        if key == "SIZE" and value.isascii() and value.isdigit():
            return int(value)
    return None
