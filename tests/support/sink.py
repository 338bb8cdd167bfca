"""A recording SMTP sink on loopback (aiosmtpd) and a self-signed TLS context for it."""

from __future__ import annotations

import asyncio
import socket
import ssl
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword

from libs.common.mail.tlsutil import self_signed_pem


class RelayGate(Protocol):
    """Who may relay: e.g. a POP3 server that remembers the addresses that logged in."""

    def authorized(self, ip: str) -> bool: ...


@dataclass
class Sink:
    """Records every transaction; answers RCPT from `replies` when the address is there.

    `relay_gate` set: RCPT is refused (554 5.7.1) unless the client's address passes it.
    `dsn`: EHLO offers DSN (RFC 3461) and MAIL/RCPT take its parameters.
    """

    replies: dict[str, str] = field(default_factory=dict)
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    tls_seen: list[bool] = field(default_factory=list)
    data_delay: float = 0.0  # a slow server: seconds spent before answering DATA
    in_data: int = 0
    max_in_data: int = 0
    relay_gate: RelayGate | None = None
    # SMTP sessions (connections): open now, the most at once, and in all.
    sessions_open: int = 0
    max_sessions_open: int = 0
    sessions: int = 0
    mail_from_seen: int = 0  # MAIL commands: more than `sessions` means reused sessions
    auth_logins: list[str] = field(default_factory=list)
    auth_attempts: list[str] = field(default_factory=list)  # the mechanism of each AUTH
    dsn: bool = False
    # Every MAIL and RCPT argument as the client sent it ("FROM:<a@b> RET=HDRS").
    mail_args: list[str] = field(default_factory=list)
    rcpt_args: list[str] = field(default_factory=list)

    async def handle_EHLO(
        self, server: Any, session: Any, envelope: Any, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        if self.dsn:
            responses.insert(len(responses) - 1, "250-DSN")
        return responses

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.mail_from_seen += 1
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if self.relay_gate is not None and not self.relay_gate.authorized(session.peer[0]):
            return "554 5.7.1 Relay access denied"
        reply = self.replies.get(address)
        if reply is not None:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.in_data += 1
        self.max_in_data = max(self.max_in_data, self.in_data)
        try:
            await asyncio.sleep(self.data_delay)
        finally:
            self.in_data -= 1
        self.received.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.content))
        self.tls_seen.append(session.ssl is not None)
        return "250 2.0.0 queued"


_DSN_PARAMETERS = frozenset({"RET", "ENVID", "NOTIFY", "ORCPT"})


class _CountingSMTP(SMTP):
    async def smtp_MAIL(self, arg: str | None) -> None:
        self.event_handler.mail_args.append(arg or "")
        await super().smtp_MAIL(arg)

    async def smtp_RCPT(self, arg: str | None) -> None:
        self.event_handler.rcpt_args.append(arg or "")
        await super().smtp_RCPT(arg)

    def _getparams(self, params: Sequence[str]) -> dict[str, str | bool] | None:
        # aiosmtpd refuses every parameter it does not know; a DSN sink knows these.
        found = super()._getparams(params)
        if found is None or not self.event_handler.dsn:
            return found
        return {k: v for k, v in found.items() if k not in _DSN_PARAMETERS}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sink: Sink = self.event_handler
        sink.sessions += 1
        sink.sessions_open += 1
        sink.max_sessions_open = max(sink.max_sessions_open, sink.sessions_open)
        super().connection_made(transport)

    def connection_lost(self, error: Exception | None) -> None:
        self.event_handler.sessions_open -= 1
        super().connection_lost(error)


class _BrokenTlsSMTP(_CountingSMTP):
    """Offers STARTTLS, says yes, then sends garbage instead of a TLS handshake."""

    async def smtp_STARTTLS(self, arg: str) -> None:
        await self.push("220 2.0.0 Ready to start TLS")
        assert isinstance(self.transport, asyncio.WriteTransport)
        self.transport.write(b"this is not a TLS server hello\r\n" * 8)
        self.transport.close()


class _SinkController(Controller):
    smtp_class: type[SMTP] = _CountingSMTP

    def factory(self) -> SMTP:
        with warnings.catch_warnings():
            # AUTH over plain text is what these tests want.
            warnings.filterwarnings("ignore", "Requiring AUTH while not requiring TLS")
            return self.smtp_class(self.handler, **self.SMTP_kwargs)


def password_checker(users: dict[str, str], sink: Sink) -> Callable[..., AuthResult]:
    def check(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        sink.auth_attempts.append(mechanism)
        if isinstance(data, LoginPassword):
            user, password = data.login.decode(), data.password.decode()
            if users.get(user) == password:
                sink.auth_logins.append(user)
                return AuthResult(success=True)
        return AuthResult(success=False, handled=False)

    return check


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        port: int = s.getsockname()[1]
        return port


def self_signed(tmp: Path) -> ssl.SSLContext:
    cert, key = self_signed_pem("sink.test")
    cert_file, key_file = tmp / "sink.crt", tmp / "sink.key"
    cert_file.write_bytes(cert)
    key_file.write_bytes(key)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context


@pytest.fixture
def sink_factory() -> Iterator[Callable[..., tuple[Sink, int]]]:
    controllers: list[Controller] = []

    def make(
        replies: dict[str, str] | None = None,
        tls: ssl.SSLContext | None = None,
        data_delay: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        users: dict[str, str] | None = None,
        relay_gate: RelayGate | None = None,
        broken_tls: bool = False,
        dsn: bool = False,
    ) -> tuple[Sink, int]:
        """`users`: AUTH required with one of these (user -> password), over plain text too.
        `broken_tls` (with `tls`): STARTTLS is offered but every handshake fails.
        `dsn`: the sink offers DSN and takes its parameters (recorded in mail/rcpt_args)."""
        sink = Sink(replies or {}, data_delay=data_delay, relay_gate=relay_gate, dsn=dsn)
        port = port or free_port(host)
        extra: dict[str, Any] = {"tls_context": tls, "require_starttls": False} if tls else {}
        if users is not None:
            extra |= {
                "authenticator": password_checker(users, sink),
                "auth_required": True,
                "auth_require_tls": False,
            }
        controller = _SinkController(sink, hostname=host, port=port, **extra)
        if broken_tls:
            controller.smtp_class = _BrokenTlsSMTP
        controller.start()
        # start() made one connection of its own to check the server is up: not ours.
        sink.sessions = sink.max_sessions_open = 0
        sink.mail_args.clear()
        sink.rcpt_args.clear()
        controllers.append(controller)
        return sink, port

    yield make
    for controller in controllers:
        controller.stop()
