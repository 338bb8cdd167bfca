"""A recording SMTP sink on loopback (aiosmtpd) and a self-signed TLS context for it."""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass
class Sink:
    """Records every transaction; answers RCPT from `replies` when the address is there."""

    replies: dict[str, str] = field(default_factory=dict)
    received: list[tuple[str, list[str], bytes]] = field(default_factory=list)
    tls_seen: list[bool] = field(default_factory=list)
    data_delay: float = 0.0  # a slow server: seconds spent before answering DATA
    in_data: int = 0
    max_in_data: int = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def self_signed(tmp: Path) -> ssl.SSLContext:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sink.test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp / "sink.crt", tmp / "sink.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
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
    ) -> tuple[Sink, int]:
        sink = Sink(replies or {}, data_delay=data_delay)
        port = free_port()
        extra: dict[str, Any] = {"tls_context": tls, "require_starttls": False} if tls else {}
        controller = Controller(sink, hostname="127.0.0.1", port=port, **extra)
        controller.start()
        controllers.append(controller)
        return sink, port

    yield make
    for controller in controllers:
        controller.stop()
