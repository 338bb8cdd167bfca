"""An SMTP client that writes exactly the bytes it is given: for what smtplib would hide.

Every read is bounded in time, so a server that stops answering fails the test
instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from prometheus_client import REGISTRY

IO_TIMEOUT_S = 10.0


def unverified_context() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class RawSmtp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def connect(cls, addr: tuple[str, int], tls: bool = False) -> RawSmtp:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(*addr, ssl=unverified_context() if tls else None),
            IO_TIMEOUT_S,
        )
        return cls(reader, writer)

    @classmethod
    async def greeted(cls, addr: tuple[str, int], tls: bool = False) -> RawSmtp:
        client = await cls.connect(addr, tls)
        greeting = await client.reply()
        assert greeting.startswith("220 "), greeting
        return client

    async def reply(self, within: float = IO_TIMEOUT_S) -> str:
        """One whole reply; a multi-line reply as its lines joined by newlines; "EOF" if the
        server hung up."""
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), within)
            if not raw:
                lines.append("EOF")
                break
            line = raw.decode("utf-8", errors="backslashreplace").removesuffix("\r\n")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                break
        return "\n".join(lines)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def cmd(self, line: str | bytes) -> str:
        await self.send((line.encode() if isinstance(line, str) else line) + b"\r\n")
        return await self.reply()

    async def starttls(self) -> None:
        assert (await self.cmd("STARTTLS")).startswith("220 ")
        await self.writer.start_tls(unverified_context())

    async def closed(self, within: float = IO_TIMEOUT_S) -> bool:
        """The server hung up (after anything it still had to say)."""
        try:
            while await asyncio.wait_for(self.reader.read(4096), within):
                pass
        except ConnectionError:
            return True
        return True

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def sample(name: str, **labels: str) -> float:
    """A metric of this process (ingress runs in the test's process)."""
    return REGISTRY.get_sample_value(name, labels) or 0.0
