"""End-to-end benchmark: `mailbus up` relaying to a local sink.

    python bench/e2e.py [-n 10000] [-c 20] [--size 2048] [--reuse] [--rate R]
                        [--rcpts 1] [--pipeline]

Prints accepted msgs/s (client side, until the last "250"), delivered msgs/s
(first send to last arrival at the sink), p50/p99 latency from "250" to
arrival, CPU seconds per message used by mailbus's service processes and by
nats-server (from /proc, so Linux only), the resident memory of ingress and
queue before and after, and, counted on the bus (bench/busmeter.py), the awaited
NATS round trips per service and the stored writes per message.

Like perf-compare's r1, each message comes on a new connection unless --reuse;
the connection limit is on (--conn-limit, 50 like Postfix's anvil). --rate paces
the clients to that many messages per second in total (for latency at a given
load, e.g. half the peak rate of an unpaced run). --rcpts gives each message that
many recipients (perf-compare's r10: 10); --pipeline sends MAIL, the RCPTs and DATA
in one write, as smtp-source and Postfix do (RFC 2920), instead of aiosmtplib's
one command per round trip.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiosmtplib

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.busmeter import BusMeter  # noqa: E402
from libs.common.runtime.embedded_nats import free_port  # noqa: E402

CONFIG = """\
server: {{hostname: mx.bench.test, local_domains: [bench.test]}}
nats: {{url: []}}
listeners:
  - {{name: smtp, protocol: smtp, address: "127.0.0.1:{smtp}", tls: none}}
ip_groups: {{lan: [127.0.0.0/8]}}
relay: {{mode: restricted, allowed_ip_group: lan, hide_local_ip_group: null}}
security:
  max_messages_per_hour_per_ip: 0
  max_connections_per_ip: {conn_limit}
  require_sender_domain_dns: false
  max_recipients: 0
antispam: {{spf: false}}
delivery:
  mode: relay
  relay_host: {{host: 127.0.0.1, port: {sink}}}
  tls: none
  max_delivery_threads: {threads}
telemetry: {{metrics_address: null}}
"""

CLK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK


def descendants(root: int) -> dict[int, str]:
    """pid -> command line of every process below `root`."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    out: dict[int, str] = {}
    frontier = [root]
    while frontier:
        pid = frontier.pop()
        for child, parent in parents.items():
            if parent == pid and child not in out:
                try:
                    cmd = Path(f"/proc/{child}/cmdline").read_bytes().replace(b"\0", b" ")
                except OSError:
                    continue
                out[child] = cmd.decode(errors="replace")
                frontier.append(child)
    return out


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def service_pids(procs: dict[int, str]) -> dict[str, int]:
    return {
        svc: pid
        for pid, cmd in procs.items()
        for svc in ("ingress", "queue")
        if f"services.{svc}" in cmd
    }


def message(ident: str, size: int) -> bytes:
    head = (
        f"From: bench@bench.test\r\nTo: sink@remote.test\r\nSubject: bench {ident}\r\n"
        f"X-Bench-Id: {ident}\r\n\r\n"
    ).encode()
    line = b"The quick brown fox jumps over the lazy dog 0123456789 abcdefghij\r\n"
    body = (line * (size // len(line) + 1))[: max(0, size - len(head))]
    return head + body


async def read_ready(proc: asyncio.subprocess.Process, limit_s: float) -> None:
    assert proc.stdout is not None
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(proc.stdout.readline(), deadline - time.monotonic())
        if not line:
            raise RuntimeError("mailbus up exited before it was ready")
        if b"ready:" in line:
            return
    raise TimeoutError("mailbus up not ready")


class PipelinedClient:
    """smtp-source's way: EHLO, then MAIL, every RCPT and DATA in one write (RFC 2920)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def reply(self) -> str:
        assert self.reader is not None
        while True:
            line = (await asyncio.wait_for(self.reader.readline(), 60)).decode()
            if not line:
                raise ConnectionError("closed")
            if line[3:4] != "-":
                return line

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", self.port)
        await self.reply()
        self.writer.write(b"EHLO client.bench.test\r\n")
        await self.reply()

    async def sendmail(self, rcpts: list[str], data: bytes) -> bool:
        assert self.writer is not None
        commands = [b"MAIL FROM:<bench@bench.test>"]
        commands += [f"RCPT TO:<{r}>".encode() for r in rcpts] + [b"DATA"]
        self.writer.write(b"".join(c + b"\r\n" for c in commands))
        answers = [await self.reply() for _ in commands]
        if not answers[-1].startswith("354"):
            return False
        self.writer.write(data.replace(b"\r\n.", b"\r\n..") + b"\r\n.\r\n")
        return (await self.reply()).startswith("250")

    async def quit(self) -> None:
        assert self.writer is not None
        self.writer.write(b"QUIT\r\n")
        with contextlib.suppress(Exception):
            await self.reply()
        self.writer.close()


async def drain(stream: asyncio.StreamReader | None) -> None:
    while stream is not None and await stream.readline():
        pass


async def run(args: argparse.Namespace) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mailbus-bench-"))
    smtp_port, sink_port = free_port(), free_port()
    cfg = tmp / "bench.yaml"
    cfg.write_text(
        CONFIG.format(
            smtp=smtp_port, sink=sink_port, threads=args.threads, conn_limit=args.conn_limit
        )
    )

    sink = await asyncio.create_subprocess_exec(
        sys.executable,
        str(ROOT / "bench" / "sink.py"),
        "127.0.0.1",
        str(sink_port),
        stdout=asyncio.subprocess.PIPE,
    )
    assert sink.stdout is not None
    await sink.stdout.readline()
    arrivals: dict[str, float] = {}
    all_arrived = asyncio.Event()

    async def collect() -> None:
        assert sink.stdout is not None
        while line := await sink.stdout.readline():
            ident, at, _ = line.decode().split()
            arrivals[ident] = float(at)
            if len(arrivals) >= args.n:
                all_arrived.set()

    collector = asyncio.create_task(collect())
    env = dict(os.environ, MAILBUS_LOG_LEVEL="WARNING")
    up = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ops.cli",
        "up",
        "--config",
        str(cfg),
        "--data-dir",
        str(tmp / "var"),
        cwd=str(ROOT),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        await read_ready(up, 90)
        drainer = asyncio.create_task(drain(up.stdout))
        procs = descendants(up.pid)
        watched = service_pids(procs)
        rss_before = {svc: rss_kib(pid) for svc, pid in watched.items()}
        meter = BusMeter((tmp / "var" / "nats-admin.url").read_text().strip())
        await meter.start()
        cpu_before = {pid: cpu_seconds(pid) for pid in procs}

        accepted: dict[str, float] = {}
        refused = 0
        queue: asyncio.Queue[int] = asyncio.Queue()
        for i in range(args.n):
            queue.put_nowait(i)

        async def send(smtp: aiosmtplib.SMTP, i: int) -> None:
            nonlocal refused
            if args.rate:
                await asyncio.sleep(max(0.0, start + i / args.rate - time.time()))
            ident = f"m{i}"
            try:
                await smtp.sendmail("bench@bench.test", rcpts, message(ident, args.size))
                accepted[ident] = time.time()
            except aiosmtplib.SMTPException:
                refused += 1

        rcpts = [f"sink{j}@remote.test" for j in range(args.rcpts)]

        async def pipelined() -> None:
            nonlocal refused
            smtp = PipelinedClient(smtp_port)
            if args.reuse:
                await smtp.connect()
            while not queue.empty():
                i = queue.get_nowait()
                if not args.reuse:
                    await smtp.connect()
                if args.rate:
                    await asyncio.sleep(max(0.0, start + i / args.rate - time.time()))
                if await smtp.sendmail(rcpts, message(f"m{i}", args.size)):
                    accepted[f"m{i}"] = time.time()
                else:
                    refused += 1
                if not args.reuse:
                    await smtp.quit()
            if args.reuse:
                await smtp.quit()

        async def client() -> None:
            if args.pipeline:
                await pipelined()
                return
            smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=smtp_port, timeout=60)
            if args.reuse:
                await smtp.connect()
            try:
                while not queue.empty():
                    i = queue.get_nowait()
                    if not args.reuse:
                        await smtp.connect()
                    await send(smtp, i)
                    if not args.reuse:
                        await smtp.quit()
            finally:
                if smtp.is_connected:
                    await smtp.quit()

        start = time.time()
        await asyncio.gather(*(client() for _ in range(args.c)))
        accept_end = time.time()
        try:
            await asyncio.wait_for(all_arrived.wait(), args.timeout)
        except TimeoutError:
            print(f"timeout: {len(arrivals)} of {args.n} arrived", file=sys.stderr)
        deliver_end = max(arrivals.values()) if arrivals else time.time()
        await asyncio.sleep(1.0)  # the trailing bookkeeping (completion, body purge) counts
        bus_lines = await meter.report(len(arrivals))

        cpu_svc = cpu_nats = 0.0
        for pid, cmd in procs.items():
            try:
                used = cpu_seconds(pid) - cpu_before[pid]
            except OSError:
                continue
            if "nats-server" in cmd:
                cpu_nats += used
            else:
                cpu_svc += used
        latencies = sorted(arrivals[k] - accepted[k] for k in arrivals if k in accepted)
        n_ok = len(accepted)
        print(f"messages            {args.n} x {args.size} B, {args.c} connections")
        print(f"accepted            {n_ok} (refused {refused})")
        print(f"accepted msgs/s     {n_ok / (accept_end - start):.1f}")
        print(f"delivered           {len(arrivals)}")
        print(f"delivered msgs/s    {len(arrivals) / (deliver_end - start):.1f}")
        if latencies:
            p50 = statistics.median(latencies)
            p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))]
            print(f"250->sink p50       {p50 * 1000:.1f} ms")
            print(f"250->sink p99       {p99 * 1000:.1f} ms")
        per = max(1, len(arrivals))
        print(f"cpu/msg services    {cpu_svc / per * 1000:.2f} ms")
        print(f"cpu/msg nats-server {cpu_nats / per * 1000:.2f} ms")
        for svc, pid in watched.items():
            print(f"rss {svc:<16}{rss_before[svc] / 1024:.1f} -> {rss_kib(pid) / 1024:.1f} MiB")
        for line in bus_lines:
            print(line)
        drainer.cancel()
    finally:
        up.send_signal(signal.SIGTERM)
        await up.wait()
        sink.terminate()
        await sink.wait()
        collector.cancel()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("-n", type=int, default=10_000, help="messages")
    p.add_argument("-c", type=int, default=20, help="concurrent SMTP connections")
    p.add_argument("--size", type=int, default=2048, help="message size in bytes")
    p.add_argument("--threads", type=int, default=32, help="delivery.max_delivery_threads")
    p.add_argument("--timeout", type=float, default=600, help="seconds to wait for delivery")
    p.add_argument("--reuse", action="store_true", help="keep each client's connection open")
    p.add_argument(
        "--rate", type=float, default=0.0, help="total messages/s (0: as fast as it goes)"
    )
    p.add_argument("--rcpts", type=int, default=1, help="recipients per message")
    p.add_argument("--pipeline", action="store_true", help="MAIL, RCPTs, DATA in one write")
    p.add_argument("--conn-limit", type=int, default=50, help="security.max_connections_per_ip")
    asyncio.run(run(p.parse_args()))


if __name__ == "__main__":
    main()
