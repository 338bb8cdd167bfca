"""POP3-before-SMTP: log in to the relay host's POP3 server so it lets our address relay.

A small asyncio POP3 client (RFC 1939 USER/PASS, RFC 2595 STLS): greeting,
CAPA, STLS when offered (and when `delivery.tls` allows it; `required` and
`verify` insist on it), USER, PASS, QUIT. The password goes out only over TLS
unless `delivery.relay_host.auth.allow_plaintext` says otherwise. A failure comes
back as a stand-in `Reply` that defers the mail with a diagnostic that says what
the POP3 server answered.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from services.delivery.adapters.smtp_client import tls_context
from services.delivery.core.errors import (
    ConnectFailedError,
    DeliveryError,
    LoginRefusedError,
    PlaintextLoginError,
    TlsUnavailableError,
)
from services.delivery.core.plan import ENCRYPTED_ONLY
from services.delivery.core.replies import Reply

MAX_LINE = 4096
MAX_CAPA_LINES = 100


class _Conversation:
    def __init__(
        self, host: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, wait_s: float
    ) -> None:
        self.host = host
        self.reader = reader
        self.writer = writer
        self.wait_s = wait_s  # for each reply

    async def line(self) -> str:
        raw = await asyncio.wait_for(self.reader.readline(), self.wait_s)
        if not raw:
            raise ConnectFailedError(f"POP3 at {self.host}: connection closed")
        return raw[:MAX_LINE].decode("utf-8", "replace").rstrip("\r\n")

    async def command(self, text: str, shown: str | None = None) -> str:
        self.writer.write(text.encode() + b"\r\n")
        await self.writer.drain()
        answer = await self.line()
        if not answer.startswith("+OK"):
            what = shown or text.split(" ", 1)[0]
            raise LoginRefusedError(f"POP3 {what} at {self.host}: {answer}")
        return answer

    async def capabilities(self) -> set[str]:
        try:
            await self.command("CAPA")
        except DeliveryError:
            return set()  # RFC 2449 is optional: no CAPA, no STLS
        caps: set[str] = set()
        for _ in range(MAX_CAPA_LINES):
            entry = await self.line()
            if entry == ".":
                break
            caps.add(entry.split(" ", 1)[0].upper())
        return caps


async def pop3_login(
    host: str,
    port: int,
    user: str,
    password: str,
    tls: str,
    wait_s: float,
    allow_plaintext: bool = False,
    ca_file: str | None = None,
) -> Reply | None:
    """None when the login succeeded, else the reply that defers the mail."""
    try:
        await _login(host, port, user, password, tls, wait_s, allow_plaintext, ca_file)
    except DeliveryError as exc:
        return exc.reply
    return None


async def _login(
    host: str,
    port: int,
    user: str,
    password: str,
    tls: str,
    wait_s: float,
    allow_plaintext: bool,
    ca_file: str | None,
) -> None:
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), wait_s)
    except (OSError, TimeoutError) as exc:
        raise ConnectFailedError(f"POP3 connect to {host}:{port}: {exc or 'timed out'}") from None
    talk = _Conversation(host, reader, writer, wait_s)
    try:
        greeting = await talk.line()
        if not greeting.startswith("+OK"):
            raise ConnectFailedError(f"POP3 at {host} refused us: {greeting}")
        encrypted = False
        if tls != "none":
            if "STLS" in await talk.capabilities():
                await talk.command("STLS")
                # The same TLS level as the SMTP side (verify checks chain and name).
                await writer.start_tls(tls_context(tls, ca_file), server_hostname=host)
                encrypted = True
            elif tls in ENCRYPTED_ONLY:
                raise TlsUnavailableError(f"POP3 at {host} does not offer STLS")
        if not encrypted and not allow_plaintext:
            raise PlaintextLoginError(
                f"POP3 at {host}: not sending the password without TLS "
                "(delivery.relay_host.auth.allow_plaintext is false)"
            )
        await talk.command(f"USER {user}")
        await talk.command(f"PASS {password}", shown="PASS")
        with contextlib.suppress(DeliveryError, OSError, TimeoutError):
            await talk.command("QUIT")
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise ConnectFailedError(f"POP3 at {host}: {type(exc).__name__} {exc}".strip()) from None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
