"""Memory of the front door under concurrent maximum-size uploads.

    python bench/upload_memory.py [-c 8] [--size 24MB] [--rounds 2]

Starts a nats-server and, as child processes, policy and ingress; then `-c`
clients at once each send a message of `--size` over DATA (and as many over
BDAT), written in 64 KiB pieces. Prints the ingress process's resident memory
(VmRSS) before, its peak (VmHWM) during the uploads, and the growth, for DATA
and for BDAT, with how many messages were queued (`--refused`: none, so the
reading and spooling are measured without the store). The issue's bound: 8
concurrent uploads of the maximum size add at most 64 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libs.common.config.units import parse_size  # noqa: E402
from libs.common.runtime import bus  # noqa: E402
from libs.common.runtime.embedded_nats import EmbeddedNats, free_port  # noqa: E402

PIECE = 64 * 1024

CONFIG = """
server: {{hostname: mx.bench.test, local_domains: [bench.test]}}
users: [{{address: bob@bench.test}}]
listeners:
  - {{name: smtp, address: "127.0.0.1:{port}", tls: none}}
security:
  require_sender_domain_dns: false
  max_connections_per_ip: 0
  max_messages_per_hour_per_ip: 0
  max_message_size: {limit}
  min_data_rate: 0
  max_received_headers: {hops}
telemetry: {{metrics_address: null}}
"""


def memory_kb(pid: int) -> dict[str, int]:
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


def reset_peak(pid: int) -> None:
    # Linux 4.0+: writing 5 to clear_refs resets VmHWM to the current RSS.
    Path(f"/proc/{pid}/clear_refs").write_text("5")


async def reply(reader: asyncio.StreamReader) -> str:
    while True:
        line = (await asyncio.wait_for(reader.readline(), 120)).decode()
        if len(line) < 4 or line[3] != "-":
            return line.strip()


async def upload(port: int, size: int, chunking: bool) -> bool:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await reply(reader)
        for command in (
            b"EHLO bench.client",
            b"MAIL FROM:<a@remote.test>",
            b"RCPT TO:<bob@bench.test>",
        ):
            writer.write(command + b"\r\n")
            await reply(reader)
        line = b"x" * 998 + b"\r\n"
        header = b"Received: a\r\nReceived: b\r\nSubject: memory\r\n\r\n"
        lines = (size - len(header)) // len(line)
        total = len(header) + lines * len(line)
        if chunking:
            writer.write(f"BDAT {total} LAST\r\n".encode())
        else:
            writer.write(b"DATA\r\n")
            await writer.drain()
            await reply(reader)
        writer.write(header)
        piece = line * (PIECE // len(line))
        sent = 0
        while sent < lines:
            count = min(lines - sent, PIECE // len(line))
            writer.write(piece if count == PIECE // len(line) else line * count)
            await writer.drain()
            sent += count
        if not chunking:
            writer.write(b".\r\n")
        return (await reply(reader)).startswith("250 ")
    finally:
        writer.close()


async def start(service: str, config: Path, url: str, log: Path) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", f"services.{service}", "--config", str(config),
        "--nats-url", url, stdout=log.open("w"), stderr=asyncio.subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip


async def wait_listening(port: int, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while True:
        try:
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.2)


async def run(args: argparse.Namespace) -> None:
    size = parse_size(args.size)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        server = EmbeddedNats(data_dir=work / "nats", log_file=work / "nats.log")
        server.start()
        procs: list[asyncio.subprocess.Process] = []
        try:
            nc = await bus.connect([server.url], name="bench")
            await bus.ensure_topology(await bus.wait_for_jetstream(nc))
            await nc.close()
            port = free_port()
            config = work / "mailbus.yaml"
            # --refused: policy refuses every message at the end of DATA (as a mail loop),
            # so what is measured is reading and spooling alone, without the store.
            hops = 1 if args.refused else 30
            config.write_text(CONFIG.format(port=port, limit=size + 1024 * 1024, hops=hops))
            for service in ("policy", "ingress"):
                procs.append(await start(service, config, server.url, work / f"{service}.log"))
            await wait_listening(port)
            ingress = procs[-1].pid
            await upload(port, 1024 * 1024, False)  # warm up: imports, first connections
            for chunking in (False, True) * args.rounds:
                before = memory_kb(ingress)
                reset_peak(ingress)
                started = time.monotonic()
                done = await asyncio.gather(
                    *(upload(port, size, chunking) for _ in range(args.concurrency))
                )
                elapsed = time.monotonic() - started
                after = memory_kb(ingress)
                growth = (after["VmHWM"] - before["VmRSS"]) / 1024
                how = "BDAT" if chunking else "DATA"
                print(
                    f"{how}: {args.concurrency} x {size / 2**20:.1f} MiB "
                    f"in {elapsed:.1f} s, {sum(done)} queued; ingress RSS "
                    f"{before['VmRSS'] / 1024:.0f} MiB, peak {after['VmHWM'] / 1024:.0f} MiB "
                    f"(+{growth:.0f} MiB)"
                )
        except Exception:
            print((work / "ingress.log").read_text()[-3000:])
            raise
        finally:
            for proc in reversed(procs):
                if proc.returncode is None:
                    proc.send_signal(signal.SIGTERM)
                    try:
                        await asyncio.wait_for(proc.wait(), 15)
                    except TimeoutError:
                        proc.kill()
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-c", "--concurrency", type=int, default=8)
    parser.add_argument("--size", default="24MB")
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument(
        "--refused", action="store_true", help="policy refuses each message: no store"
    )
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
