"""Reading the message of a DATA command off the stream, in bounded memory.

aiosmtpd's StreamReader holds at most about two line limits before it stops
reading from the socket, and `DataAssembler` keeps nothing past the size
limit, so a client sending a gigabyte costs the server its buffers, not its
message.
"""

from __future__ import annotations

import asyncio

from services.ingress.core.data import DataAssembler


async def read_message(reader: asyncio.StreamReader, assembler: DataAssembler) -> None:
    """Feed the assembler until the end-of-data line; ConnectionError if the client left."""
    while True:
        try:
            piece = await reader.readuntil(b"\r\n")
        except asyncio.LimitOverrunError as exc:
            # A line longer than the buffer: take what is there (never a CRLF split in two).
            piece = await reader.read(exc.consumed)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("connection closed during DATA") from exc
        if not piece:
            raise ConnectionResetError("connection closed during DATA")
        if assembler.feed(piece):
            return
