"""A small POP3 server on loopback for tests (RFC 1939 USER/PASS, CAPA, optional STLS).

It has no mailboxes: it exists to be logged in to. It records which client
address logged in successfully, so an SMTP sink can refuse relay unless that
address came here first (POP3-before-SMTP, as old ISP relays did).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import pytest

from tests.support.sink import free_port

MAX_COMMANDS = 50


@dataclass
class Pop3Server:
    users: dict[str, str] = field(default_factory=dict)
    tls: ssl.SSLContext | None = None  # STLS offered when set
    host: str = "127.0.0.1"
    port: int = 0
    logins: list[str] = field(default_factory=list)  # client addresses, in order
    failures: list[str] = field(default_factory=list)
    tls_used: list[bool] = field(default_factory=list)
    # How long a login lets its address relay; None: for ever.
    grant_s: float | None = None
    _login_at: dict[str, float] = field(default_factory=dict)
    _server: asyncio.Server | None = None
    _clients: set[asyncio.StreamWriter] = field(default_factory=set)

    def authorized(self, ip: str) -> bool:
        at = self._login_at.get(ip)
        if at is None:
            return False
        return self.grant_s is None or time.monotonic() - at < self.grant_s

    async def start(self) -> Pop3Server:
        self.port = self.port or free_port()
        self._server = await asyncio.start_server(self._session, self.host, self.port)
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._clients):
                writer.close()
            await self._server.wait_closed()

    async def _session(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._clients.add(writer)
        peer = writer.get_extra_info("peername")[0]
        user: str | None = None
        secure = False

        async def say(line: str) -> None:
            writer.write(line.encode() + b"\r\n")
            await writer.drain()

        try:
            await say("+OK test POP3 server ready")
            for _ in range(MAX_COMMANDS):
                raw = await asyncio.wait_for(reader.readline(), 10)
                if not raw:
                    break
                verb, _, arg = raw.decode().strip().partition(" ")
                verb = verb.upper()
                if verb == "CAPA":
                    await say("+OK capabilities follow")
                    for cap in (["STLS"] if self.tls and not secure else []) + ["USER"]:
                        await say(cap)
                    await say(".")
                elif verb == "STLS" and self.tls is not None and not secure:
                    await say("+OK begin TLS")
                    await writer.start_tls(self.tls)
                    secure = True
                elif verb == "USER":
                    user = arg
                    await say("+OK")
                elif verb == "PASS" and user is not None:
                    if self.users.get(user) == arg:
                        self.logins.append(peer)
                        self._login_at[peer] = time.monotonic()
                        self.tls_used.append(secure)
                        await say("+OK logged in")
                    else:
                        self.failures.append(peer)
                        await say("-ERR [AUTH] invalid user name or password")
                elif verb == "QUIT":
                    await say("+OK bye")
                    break
                else:
                    await say("-ERR unknown command")
        except (ConnectionError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        finally:
            self._clients.discard(writer)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


USER, PASSWORD = "relayuser", "s3cret"


@pytest.fixture
async def pop3_server() -> AsyncIterator[Pop3Server]:
    """Knows USER/PASSWORD; set `.tls` to offer STLS, `.users` to change accounts."""
    server = await Pop3Server(users={USER: PASSWORD}).start()
    try:
        yield server
    finally:
        await server.stop()
