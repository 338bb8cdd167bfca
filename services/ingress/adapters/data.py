"""Reading commands and messages off the stream, against the session's deadlines.

aiosmtpd's StreamReader holds at most about two line limits before it stops
reading from the socket, and `DataAssembler` passes every piece on to the
spool, so a client sending a gigabyte costs the server its buffers, not its
message. Every read has a deadline (core/deadlines.py): a client that stops
sending, or sends too slowly, is told so with `TransferTooSlow`/`CommandTimeout`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from services.ingress.core.data import DataAssembler
from services.ingress.core.deadlines import TransferClock


class ReadTimeout(Exception):
    """The client did not send in time; the session answers 421 4.4.2 and closes."""


class LineTooLong(Exception):
    """A command line over the reader's limit; it was read to its end and dropped."""


def buffered(reader: asyncio.StreamReader) -> int:
    """Bytes the client sent that no read took yet (RFC 2920's check needs to know)."""
    # asyncio private: StreamReader has no public way to look at its buffer.
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    return len(buffer)


def _has(reader: asyncio.StreamReader, separator: bytes) -> bool:
    """The separator is already buffered: reading up to it cannot wait for the client."""
    # asyncio private, as `buffered`.
    buffer: bytearray = reader._buffer  # type: ignore[attr-defined]
    return separator in buffer


async def _until(reader: asyncio.StreamReader, separator: bytes, seconds: float) -> bytes:
    """`readuntil` against a deadline. A line already in the buffer needs none: arming a
    timer (wait_for's task, or even a bare timeout) for each line of every message was
    a tenth of ingress's CPU, for reads that never wait."""
    if _has(reader, separator):
        return await reader.readuntil(separator)
    async with asyncio.timeout(seconds):
        return await reader.readuntil(separator)


async def read_line(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """One command line with its line break; b"" when the client has left."""
    deadline = time.monotonic() + seconds
    too_long = False
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise ReadTimeout
        try:
            line = await _until(reader, b"\n", left)
        except TimeoutError:
            raise ReadTimeout from None
        except asyncio.LimitOverrunError as exc:
            # Read to the end of the line, keeping none of it, then refuse it whole.
            await reader.readexactly(exc.consumed)
            too_long = True
            continue
        except asyncio.IncompleteReadError:
            return b""
        if too_long:
            raise LineTooLong
        return line


async def read_message(
    reader: asyncio.StreamReader, assembler: DataAssembler, clock: TransferClock
) -> None:
    """Feed the assembler until the end-of-data line; ConnectionError if the client left."""
    while True:
        wait = clock.wait(time.monotonic())
        if wait <= 0:
            raise ReadTimeout
        try:
            piece = await _until(reader, b"\r\n", wait)
        except TimeoutError:
            raise ReadTimeout from None
        except asyncio.LimitOverrunError as exc:
            # A line longer than the buffer: take what is there (never a CRLF split in two).
            piece = await reader.read(exc.consumed)
        except asyncio.IncompleteReadError as exc:
            raise ConnectionResetError("connection closed during DATA") from exc
        if not piece:
            raise ConnectionResetError("connection closed during DATA")
        clock.add(len(piece))
        if assembler.feed(piece):
            return


async def read_chunk(
    reader: asyncio.StreamReader, size: int, clock: TransferClock, take: ChunkTaker
) -> None:
    """BDAT's `size` octets, handed to `take` as they arrive: never parsed as commands."""
    left = size
    while left:
        wait = clock.wait(time.monotonic())
        if wait <= 0:
            raise ReadTimeout
        try:
            piece = await asyncio.wait_for(reader.read(min(left, CHUNK_READ)), wait)
        except TimeoutError:
            raise ReadTimeout from None
        if not piece:
            raise ConnectionResetError("connection closed during BDAT")
        clock.add(len(piece))
        left -= len(piece)
        take(piece)


CHUNK_READ = 64 * 1024

ChunkTaker = Callable[[bytes], None]
