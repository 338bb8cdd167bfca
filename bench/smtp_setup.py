"""CPU of setting up one ingress SMTP session (one per connection), in-process.

aiosmtpd builds a protocol object per connection; this prints the CPU that costs,
with the per-class `inspect` stand-in (services/ingress/adapters/smtpsetup.py) and
with the real `inspect`, so the saving per r1 message can be read off directly
(the end-to-end benchmark cannot separate a few tenths of a millisecond on a busy
machine). Usage: .venv/bin/python -m bench.smtp_setup [count]
"""

from __future__ import annotations

import asyncio
import inspect
import sys
import time

import aiosmtpd.smtp

from services.ingress.adapters import smtpsetup
from services.ingress.adapters.handler import IngressHandler
from services.ingress.adapters.listener import Listener, ListenerSettings, Sessions
from services.ingress.adapters.smtp import IngressSMTP


def _per_session_us(listener: Listener, handler: IngressHandler, count: int) -> float:
    for _ in range(min(count, 200)):  # warm the caches
        IngressSMTP(listener, handler)
    start = time.process_time()
    for _ in range(count):
        IngressSMTP(listener, handler)
    return (time.process_time() - start) / count * 1e6


async def main(count: int) -> None:
    settings = ListenerSettings("smtp", "mx.example.test", "none")
    listener = Listener(settings, None, None, Sessions())  # type: ignore[arg-type]
    handler = IngressHandler(listener)
    rows = []
    for rep in range(3):  # interleaved, so a busy machine hurts both alike
        smtpsetup.install()
        fast = _per_session_us(listener, handler, count)
        aiosmtpd.smtp.inspect = inspect  # type: ignore[attr-defined]
        slow = _per_session_us(listener, handler, count)
        rows.append((rep, slow, fast))
        print(f"rep {rep}: real inspect {slow:.0f} us, stand-in {fast:.0f} us CPU per session")
    smtpsetup.install()
    slow_m = sorted(r[1] for r in rows)[1]
    fast_m = sorted(r[2] for r in rows)[1]
    print(f"median: {slow_m:.0f} -> {fast_m:.0f} us per session ({slow_m - fast_m:.0f} us saved)")


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 2000))
