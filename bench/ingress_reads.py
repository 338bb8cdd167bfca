"""CPU of reading one message's DATA off the stream, in-process (ingress's read_message).

Feeds a StreamReader a message of `size` bytes (2 KB lines of 66, as the end-to-end
benchmark sends) and reads it through a DataAssembler the way a session does, so the
per-message cost of the reads themselves can be read off directly: the end-to-end
benchmark cannot separate a few hundred microseconds on a busy machine. On uvloop,
as the services run.
Usage: .venv/bin/python -m bench.ingress_reads [count] [size]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

import uvloop

from services.ingress.adapters import spool
from services.ingress.adapters.data import read_message
from services.ingress.core.data import DataAssembler
from services.ingress.core.deadlines import Deadlines, TransferClock


def _message(size: int) -> bytes:
    line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n"
    head = b"Subject: bench\r\n\r\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(head))]
    return head + body.rsplit(b"\r\n", 1)[0] + b"\r\n.\r\n"


async def _per_message_us(data: bytes, count: int) -> float:
    deadlines = Deadlines(300.0, 300.0)
    start = time.process_time()
    for _ in range(count):
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        body = spool.Spool()
        assembler = DataAssembler(None, 1000, body)
        await read_message(reader, assembler, TransferClock(deadlines, time.monotonic()))
        body.release()
    return (time.process_time() - start) / count * 1e6


async def main(count: int, size: int) -> None:
    data = _message(size)
    await _per_message_us(data, min(count, 200))  # warm up
    rows = [await _per_message_us(data, count) for _ in range(3)]
    for rep, us in enumerate(rows):
        print(f"rep {rep}: {us:.0f} us CPU per {size} B message")
    print(f"median: {statistics.median(rows):.0f} us per message")


if __name__ == "__main__":
    args = [int(a) for a in sys.argv[1:3]]
    # On uvloop, as every service runs (libs/common/runtime/service.py).
    uvloop.run(main(*(args + [2000, 2048][len(args) :])))
