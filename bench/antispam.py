"""What the antispam checks cost one message: an SPF check and a spamd scan, as policy runs them.

    python bench/antispam.py [-n 200] [-c 8] [--size 4096]

SPF: `n` checks of an include chain (three TXT look-ups) against a DNS server
on loopback, `c` at a time, through policy's SpfChecker (pyspf in its thread
pool; each check a fresh domain, so nothing is cached). spamd: `n // 4` scans
of a clean message of `size` bytes through SpamdScanner against a real spamd
(`-L`, local rules only), `c` at a time. Prints checks/s and p50/p99 latency
of each. Needs Debian's spamd (`make test-tools`).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libs.common.config.sections import DnsSection  # noqa: E402
from services.policy.adapters.spamd import SpamdScanner  # noqa: E402
from services.policy.adapters.spf import SpfChecker  # noqa: E402
from tests.support.dns import DnsServer  # noqa: E402
from tests.support.spamd import Spamd  # noqa: E402


async def timed(n: int, concurrency: int, one: Callable[[int], Awaitable[object]]) -> list[float]:
    gate = asyncio.Semaphore(concurrency)
    latencies: list[float] = []

    async def run(i: int) -> None:
        async with gate:
            started = time.perf_counter()
            await one(i)
            latencies.append(time.perf_counter() - started)

    await asyncio.gather(*(run(i) for i in range(n)))
    return latencies


def report(what: str, latencies: list[float], wall: float) -> None:
    ordered = sorted(latencies)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    print(
        f"{what}: {len(ordered)} in {wall:.2f}s = {len(ordered) / wall:.0f}/s; "
        f"p50 {statistics.median(ordered) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms"
    )


def message(size: int) -> bytes:
    head = (
        b"From: someone@pass.test\r\nTo: bob@remote.test\r\nSubject: bench\r\n"
        b"Date: Tue, 01 Dec 2026 22:00:00 +0000\r\nMessage-ID: <bench@pass.test>\r\n\r\n"
    )
    line = b"A plain line of an ordinary message about nothing much.\r\n"
    return head + line * max(1, size // len(line))


async def main(n: int, concurrency: int, size: int) -> None:
    with DnsServer() as dns, tempfile.TemporaryDirectory() as tmp:
        for i in range(n):
            dns.add(f"d{i}.test", "TXT", f'"v=spf1 include:a.d{i}.test -all"')
            dns.add(f"a.d{i}.test", "TXT", f'"v=spf1 include:b.d{i}.test -all"')
            dns.add(f"b.d{i}.test", "TXT", '"v=spf1 ip4:127.0.0.0/8 -all"')
        section = DnsSection.model_validate({"servers": [f"127.0.0.1:{dns.port}"], "timeout": 2})
        checker = SpfChecker(section, "mx.bench.test", 4.0)

        async def spf_one(i: int) -> object:
            result = await checker.check("127.0.0.1", f"a@d{i}.test", "client.test")
            assert result.result == "pass", result
            return result

        started = time.perf_counter()
        report(
            "spf (include chain)",
            await timed(n, concurrency, spf_one),
            time.perf_counter() - started,
        )
        checker.close()

        spamd = Spamd(home=Path(tmp) / "spamd")
        spamd.start()
        try:
            scanner = SpamdScanner(spamd.address, 30.0)
            body = message(size)

            async def scan_one(i: int) -> object:
                scanned = await scanner.scan(body)
                assert not isinstance(scanned, str), scanned
                return scanned

            await scan_one(0)  # the first scan loads what spamd loads lazily
            started = time.perf_counter()
            latencies = await timed(max(1, n // 4), concurrency, scan_one)
            report(f"spamd ({len(body)} bytes)", latencies, time.perf_counter() - started)
        finally:
            spamd.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200)
    parser.add_argument("-c", type=int, default=8)
    parser.add_argument("--size", type=int, default=4096)
    args = parser.parse_args()
    asyncio.run(main(args.n, args.c, args.size))
