"""Chaos benchmark: SIGKILL every kind of mailbus process, and a NATS node, under load.

    python bench/chaos.py [-n 3000] [--replicas 2] [--queue-replicas 3] [--concurrency 8]
                          [--kinds ...] [--no-restart]

A 3-node JetStream cluster (R3 streams, `sync_interval: always`) on loopback,
`--replicas` processes of each service, and a counting sink (one fsynced line per
arrival) as the relay host. A client sends N messages over the ingress replicas,
retrying like any MTA after a 4xx or a broken connection. Meanwhile one process of
each kind in `--kinds` (and one NATS node for `nats`) is SIGKILLed in turn and
started again a second later, as a supervisor would (with `--no-restart` a killed
service stays dead: its peers must take its work over). The queue runs
`--queue-replicas` processes sharing its partitions; the one killed is the owner of
partition 0. Then it waits for the queue to drain and prints:

- accepted (a "250" reached the client), delivered (distinct messages at the sink),
  lost (accepted, not delivered, not in the queue), stuck (accepted, still queued at
  the end);
- duplicated copies, split by cause: the client sent again after its connection broke
  between our accept and its "250" (two queue ids: the SMTP minimum), or mailbus sent
  one queue id twice, redelivered after a kill (copies apart) or at the same time
  (copies less than a second apart);
- per kill: the longest pause in "250"s and in arrivals from the kill to 20 s after,
  and for a queue kill how long until every partition had a live owner again.

Everything listens on 127.0.0.1; every loop is bounded in count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.controller import Controller

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from libs.common.contract import subjects  # noqa: E402
from libs.common.contract.events import MessageReceived  # noqa: E402
from libs.common.mail.history import left_queue, message_history  # noqa: E402
from libs.common.runtime import bus  # noqa: E402
from libs.common.runtime.embedded_nats import (  # noqa: E402
    die_with_parent,
    free_port,
    nats_server_binary,
)
from libs.common.runtime.lease import slot_of  # noqa: E402

KINDS = ("ingress", "policy", "queue", "delivery", "notifier", "nats")
SERVICES = ("policy", "queue", "delivery", "notifier", "ingress")
RESTART_AFTER_S = 1.0
WINDOW_S = 20.0  # after a kill, how long its pauses are measured
_QID = re.compile(r"queued as (\S+)")
_RECEIVED_ID = re.compile(rb"\(mailbus\) with \S+ id (\S+)")
_BENCH_ID = re.compile(rb"^X-Chaos-Id: (\S+)", re.MULTILINE)

CONFIG = """\
server: {{hostname: mx.chaos.test, local_domains: [chaos.test]}}
nats: {{stream_replicas: {stream_replicas}}}
listeners:
  - {{name: smtp, protocol: smtp, address: "127.0.0.1:{smtp}", tls: none}}
ip_groups: {{lan: [127.0.0.0/8]}}
relay: {{mode: restricted, allowed_ip_group: lan, hide_local_ip_group: null}}
security:
  exempt_ip_group: lan
  require_sender_domain_dns: false
antispam: {{spf: false}}
delivery:
  mode: relay
  relay_host: {{host: 127.0.0.1, port: {sink}}}
  tls: none
  max_delivery_threads: {threads}
telemetry: {{metrics_address: null}}
"""


# --- NATS cluster ---------------------------------------------------------------------------


@dataclass
class Node:
    name: str
    data_dir: Path
    port: int = field(default_factory=free_port)
    cluster_port: int = field(default_factory=free_port)
    routes: list[int] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def config_text(self) -> str:
        routes = ", ".join(f"nats://127.0.0.1:{p}" for p in self.routes)
        cluster = (
            f"cluster {{ name: mailbus-chaos, listen: 127.0.0.1:{self.cluster_port},"
            f" routes: [{routes}] }}\n"
            if self.routes
            else ""
        )
        return (
            f"server_name: {self.name}\nlisten: 127.0.0.1:{self.port}\n"
            f'jetstream {{ store_dir: "{self.data_dir / "js"}", sync_interval: always }}\n'
            f"max_payload: 8MB\n{cluster}"
        )

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        conf = self.data_dir / "nats.conf"
        conf.write_text(self.config_text())
        log = open(self.data_dir / "nats.log", "ab")
        self.proc = subprocess.Popen(
            [nats_server_binary(), "-c", str(conf)],
            stdout=log,
            stderr=log,
            start_new_session=True,
            # A run cut short from outside (a test worker killed by a timeout) must not
            # leave the cluster behind: each node goes with the process that started it.
            preexec_fn=die_with_parent,
        )
        log.close()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def cluster_of(tmp: Path, size: int) -> list[Node]:
    nodes = [Node(f"n{i}", tmp / f"n{i}") for i in range(size)]
    if size > 1:
        for node in nodes:
            node.routes = [n.cluster_port for n in nodes if n is not node]
    return nodes


async def wait_for_jetstream(urls: Sequence[str], replicas: int, limit_s: float = 60.0) -> None:
    """Until the cluster has a meta leader and the topology exists at `replicas`."""
    nc = await bus.connect(urls, name="chaos")
    try:
        deadline = time.monotonic() + limit_s
        while True:
            try:
                js = nc.jetstream()
                await js.account_info()
                await bus.ensure_topology(js, replicas=replicas)
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.5)
    finally:
        await nc.close()


# --- services -------------------------------------------------------------------------------


@dataclass
class ServiceProc:
    kind: str
    index: int
    config: Path
    urls: list[str]
    log: Path
    proc: asyncio.subprocess.Process | None = None

    @property
    def slot(self) -> str:
        return f"chaos-{self.kind}-{self.index}"

    async def start(self) -> None:
        args = [sys.executable, "-m", f"services.{self.kind}", "--config", str(self.config)]
        for url in self.urls:
            args += ["--nats-url", url]
        fd = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        env = dict(os.environ, OTEL_TRACES_EXPORTER="none", OTEL_METRICS_EXPORTER="none")
        env["MAILBUS_SLOT"] = self.slot
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *args,
                cwd=ROOT,
                env=env,
                stdout=fd,
                stderr=fd,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )
        finally:
            os.close(fd)

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 15)
        except TimeoutError:
            await self.kill()


# --- the counting sink ----------------------------------------------------------------------


@dataclass
class Arrival:
    bench_id: str
    queue_id: str
    at: float


class CountingSink:
    """Every arrival appended to a file and fsynced before the "250", as a real MTA would."""

    def __init__(self, path: Path) -> None:
        self.arrivals: list[Arrival] = []
        self._file = open(path, "ab")

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        data: bytes = envelope.original_content or b""
        bench = _BENCH_ID.search(data)
        qid = _RECEIVED_ID.search(data)
        arrival = Arrival(
            bench.group(1).decode() if bench else "-",
            qid.group(1).decode() if qid else "-",
            time.monotonic(),
        )
        self._file.write(f"{arrival.bench_id} {arrival.queue_id} {time.time():.6f}\n".encode())
        self._file.flush()
        os.fsync(self._file.fileno())
        self.arrivals.append(arrival)
        return "250 2.0.0 Ok"

    def close(self) -> None:
        self._file.close()


# --- the client -----------------------------------------------------------------------------


@dataclass
class Sent:
    bench_id: str
    queue_ids: list[str] = field(default_factory=list)  # one per "250" received
    accepted_at: float | None = None
    attempts: int = 0


def message(bench_id: str) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = "sender@chaos.test"
    msg["To"] = "rcpt@remote.test"
    msg["Subject"] = f"chaos {bench_id}"
    msg["X-Chaos-Id"] = bench_id
    msg.set_content(f"message {bench_id}\n")
    return msg


async def send_one(sent: Sent, ports: Sequence[int], deadline: float, accepts: list[float]) -> None:
    """Until one "250" (then stop) or the deadline: what a retrying MTA does."""
    while time.monotonic() < deadline:
        port = ports[sent.attempts % len(ports)]
        sent.attempts += 1
        try:
            client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=15)
            await client.connect()
            try:
                _, reply = await client.send_message(
                    message(sent.bench_id),
                    sender="sender@chaos.test",
                    recipients=["rcpt@remote.test"],
                )
            finally:
                try:
                    await client.quit()
                except Exception:
                    client.close()
            found = _QID.search(reply)
            sent.queue_ids.append(found.group(1) if found else "?")
            sent.accepted_at = time.monotonic()
            accepts.append(sent.accepted_at)
            return
        except Exception:
            await asyncio.sleep(0.3)


# --- a run ----------------------------------------------------------------------------------


@dataclass
class Kill:
    kind: str
    at: float
    accept_pause: float = 0.0
    delivery_pause: float = 0.0
    takeover: float | None = None  # a queue kill: until no partition is the victim's
    owners: dict[str, int] = field(default_factory=dict)  # a queue kill: partitions by slot


@dataclass
class Report:
    accepted: int
    delivered: int
    lost: int
    stuck: int
    client_resends: int
    redelivered: int
    concurrent: int
    kills: list[Kill]
    seconds: float
    sent: int
    accepted_ids: list[str] = field(default_factory=list)  # the queue ids of every "250"

    @property
    def duplicated(self) -> int:
        return self.redelivered + self.concurrent

    def lines(self) -> list[str]:
        share = 100.0 * self.duplicated / self.accepted if self.accepted else 0.0
        out = [
            f"sent {self.sent}, accepted {self.accepted}, delivered {self.delivered}, "
            f"lost {self.lost}, stuck {self.stuck}  ({self.seconds:.0f} s)",
            f"duplicates: {self.client_resends} client resends (SMTP minimum), "
            f"{self.redelivered} redelivered after a kill, {self.concurrent} sent twice at once "
            f"= mailbus {share:.2f} % of accepted",
        ]
        for kill in self.kills:
            moved = f", partitions moved in {kill.takeover:4.1f} s" if kill.takeover else ""
            if kill.owners:
                moved += f" (owned {'/'.join(map(str, sorted(kill.owners.values())))} before)"
            out.append(
                f"  kill {kill.kind:<9} longest pause: 250s {kill.accept_pause:5.1f} s, "
                f"arrivals {kill.delivery_pause:5.1f} s{moved}"
            )
        return out


def longest_pause(times: Sequence[float], start: float, end: float) -> float:
    """The longest gap between `start` and `end` with none of `times` in it; the window
    ends at the last of `times` (once the load is over, quiet is no pause)."""
    end = min(end, max(times, default=start))
    if end <= start:
        return 0.0
    inside = sorted(t for t in times if start <= t <= end)
    return max(b - a for a, b in itertools.pairwise([start, *inside, end]))


async def run(
    tmp: Path,
    n: int = 3000,
    replicas: int = 2,
    nats_nodes: int = 3,
    concurrency: int = 8,
    kinds: Sequence[str] = KINDS,
    kill_every_s: float = 6.0,
    drain_s: float = 120.0,
    threads: int = 16,
    queue_replicas: int | None = None,
    restart: bool = True,
    on_loaded: Any = None,
) -> Report:
    """`on_loaded(urls)`, if given, is awaited once the load is over and the queue
    drained, before the processes stop (a test looks at the queue through it)."""
    nodes = cluster_of(tmp, nats_nodes)
    for node in nodes:
        node.start()
    urls = [node.url for node in nodes]
    sink = CountingSink(tmp / "sink.log")
    sink_port = free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=sink_port)
    controller.start()
    procs: list[ServiceProc] = []
    ingress_ports: list[int] = []
    stream_replicas = min(3, nats_nodes)
    try:
        await wait_for_jetstream(urls, stream_replicas)
        for kind in SERVICES:
            count = queue_replicas if kind == "queue" and queue_replicas else replicas
            for index in range(count):
                smtp = free_port()
                cfg = tmp / f"{kind}-{index}.yaml"
                cfg.write_text(
                    CONFIG.format(
                        stream_replicas=stream_replicas, smtp=smtp, sink=sink_port, threads=threads
                    )
                )
                if kind == "ingress":
                    ingress_ports.append(smtp)
                proc = ServiceProc(kind, index, cfg, urls, tmp / f"{kind}-{index}.log")
                await proc.start()
                procs.append(proc)
        await _wait_listening(ingress_ports, 90.0)
        await _wait_shared(urls, queue_replicas or replicas, 90.0)
        started = time.monotonic()
        report = await _load_and_kill(
            n, procs, nodes, ingress_ports, sink, concurrency, kinds, kill_every_s, drain_s, restart
        )
        report.seconds = time.monotonic() - started
        report.stuck, report.lost = await _stuck_and_lost(urls, report, sink)
        if on_loaded is not None:
            await on_loaded(urls)
        return report
    finally:
        for proc in reversed(procs):
            await proc.stop()
        controller.stop()
        sink.close()
        for node in nodes:
            node.stop()


async def _wait_listening(ports: Sequence[int], limit_s: float) -> None:
    deadline = time.monotonic() + limit_s
    for port in ports:
        while True:
            try:
                client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, timeout=5)
                await client.connect()
                await client.quit()
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)


async def _wait_shared(urls: Sequence[str], replicas: int, limit_s: float) -> None:
    """Until the queue replicas have shared the partitions out (a third each for three),
    so that a queue kill takes a replica's fair share, not whatever it held at start."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        holders = await _queue_holders(urls)
        counts: dict[str | None, int] = defaultdict(int)
        for value in holders.values():
            counts[_slot(value)] += 1
        full = len(holders) == subjects.QUEUE_PARTITIONS and len(counts) == replicas
        if full and max(counts.values()) - min(counts.values()) <= 1:
            return
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the queue's partitions not shared out in {limit_s:.0f} s")


async def _load_and_kill(
    n: int,
    procs: list[ServiceProc],
    nodes: list[Node],
    ingress_ports: list[int],
    sink: CountingSink,
    concurrency: int,
    kinds: Sequence[str],
    kill_every_s: float,
    drain_s: float,
    restart: bool = True,
) -> Report:
    sents = [Sent(f"m{i}") for i in range(n)]
    accepts: list[float] = []
    kills: list[Kill] = []
    send_deadline = time.monotonic() + max(60.0, kill_every_s * (len(kinds) + 2) * 3)
    queue: asyncio.Queue[Sent] = asyncio.Queue()
    for sent in sents:
        queue.put_nowait(sent)

    # Paced so that the load lasts through every kill and a little after.
    rate = n / (kill_every_s * (len(kinds) + 2))
    begun = time.monotonic()

    async def sender() -> None:
        while not queue.empty():
            sent = queue.get_nowait()
            due = begun + int(sent.bench_id[1:]) / rate
            await asyncio.sleep(max(0.0, due - time.monotonic()))
            await send_one(sent, ingress_ports, send_deadline, accepts)

    async def killer() -> None:
        for kind in kinds:
            await asyncio.sleep(kill_every_s)
            kills.append(Kill(kind, time.monotonic()))
            if kind == "nats":
                node = nodes[-1]  # any one node of three; streams keep a quorum
                await asyncio.to_thread(node.kill)
                await asyncio.sleep(RESTART_AFTER_S)
                # From this thread, not a worker's: a node's parent-death signal is
                # tied to the thread that started it.
                node.start()
                continue
            victims = [p for p in procs if p.kind == kind and p.proc and p.proc.returncode is None]
            victim = victims[len(kills) % len(victims)]
            held: set[str] = set()
            if kind == "queue":  # one that owns partitions: the owner of partition 0
                holders = await _queue_holders(urls)
                victim = next((p for p in victims if p.slot == _slot(holders.get(0))), victim)
                held = {v for v in holders.values() if _slot(v) == victim.slot}
                for value in holders.values():
                    slot = _slot(value) or "?"
                    kills[-1].owners[slot] = kills[-1].owners.get(slot, 0) + 1
            await victim.kill()
            if held:
                takeovers.append(asyncio.create_task(_takeover(urls, held, kills[-1])))
            if not restart:
                continue
            await asyncio.sleep(RESTART_AFTER_S)
            await victim.start()

    urls = [node.url for node in nodes]
    takeovers: list[asyncio.Task[None]] = []
    kill_task = asyncio.create_task(killer())
    await asyncio.gather(*(sender() for _ in range(concurrency)))
    await kill_task
    await asyncio.gather(*takeovers)
    accepted = [s for s in sents if s.accepted_at is not None]
    wanted = {qid for s in accepted for qid in s.queue_ids}
    deadline = time.monotonic() + drain_s
    while time.monotonic() < deadline:
        if wanted <= {a.queue_id for a in sink.arrivals}:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)  # a late copy, if any, still counts
    arrival_times = [a.at for a in sink.arrivals]
    for kill in kills:
        kill.accept_pause = longest_pause(accepts, kill.at, kill.at + WINDOW_S)
        kill.delivery_pause = longest_pause(arrival_times, kill.at, kill.at + WINDOW_S)
    by_qid: dict[str, list[float]] = defaultdict(list)
    for arrival in sink.arrivals:
        by_qid[arrival.queue_id].append(arrival.at)
    redelivered = concurrent = 0
    for times in by_qid.values():
        times.sort()
        for a, b in itertools.pairwise(times):
            if b - a < 1.0:
                concurrent += 1
            else:
                redelivered += 1
    delivered_ids = {a.bench_id for a in sink.arrivals}
    client_resends = sum(max(0, len({q for q in s.queue_ids if q in by_qid}) - 1) for s in accepted)
    return Report(
        accepted=len(accepted),
        delivered=len(delivered_ids & {s.bench_id for s in accepted}),
        lost=0,
        stuck=0,
        client_resends=client_resends,
        redelivered=redelivered,
        concurrent=concurrent,
        kills=kills,
        seconds=0.0,
        sent=n,
        accepted_ids=sorted(wanted),
    )


async def _stuck_and_lost(
    urls: Sequence[str], report: Report, sink: CountingSink
) -> tuple[int, int]:
    """Of the accepted queue ids with no arrival: still in the queue (its history says
    it has not left: no completion in the fold, no deletion) is stuck, anything else is
    lost. The queue writes no event for a completion, so the history is read whole."""
    arrived = {a.queue_id for a in sink.arrivals}
    missing = [q for q in report.accepted_ids if q not in arrived]
    if not missing:
        return 0, 0
    nc = await bus.connect(urls, name="chaos-check")
    stuck = lost = 0
    try:
        js = nc.jetstream()
        for qid in missing:
            events = await message_history(js, qid)
            received = any(isinstance(e, MessageReceived) for e in events)
            if received and not left_queue(events):
                stuck += 1
            else:
                lost += 1
    finally:
        await nc.close()
    return stuck, lost


async def queue_holders(js: Any) -> dict[int, str]:
    """Each partition's lease value (`slot|instance`, lease.py); a partition with no
    live lease is left out."""
    kv = await js.key_value(subjects.QUEUE_LEADER_BUCKET)
    holders: dict[int, str] = {}
    for p in range(subjects.QUEUE_PARTITIONS):
        try:
            entry = await kv.get(subjects.queue_partition_key(p))
        except Exception:  # absent, expired or released
            continue
        if entry.value:
            holders[p] = entry.value.decode(errors="replace")
    return holders


async def _queue_holders(urls: Sequence[str]) -> dict[int, str]:
    nc = await bus.connect(urls, name="chaos-lease")
    try:
        return await queue_holders(nc.jetstream())
    except Exception:
        return {}
    finally:
        await nc.close()


def _slot(value: str | None) -> str | None:
    return slot_of(value.encode()) if value else None


async def _takeover(
    urls: Sequence[str], victim: set[str], kill: Kill, limit_s: float = 60.0
) -> None:
    """How long after the kill every partition had a live owner other than the killed
    process (`victim`: its lease values; a successor in its slot is another process)."""
    nc = await bus.connect(urls, name="chaos-takeover")
    try:
        js = nc.jetstream()
        while time.monotonic() - kill.at < limit_s:
            try:
                holders = await queue_holders(js)
            except Exception:  # a NATS node away: look again
                holders = {}
            if len(holders) == subjects.QUEUE_PARTITIONS and not victim & set(holders.values()):
                kill.takeover = time.monotonic() - kill.at
                return
            await asyncio.sleep(0.2)
    finally:
        await nc.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", type=int, default=3000, help="messages (default 3000)")
    parser.add_argument("--replicas", type=int, default=2, help="processes of each service")
    parser.add_argument("--queue-replicas", type=int, default=None, help="queue processes")
    parser.add_argument(
        "--no-restart", action="store_true", help="leave killed services dead (not NATS)"
    )
    parser.add_argument("--concurrency", type=int, default=8, help="client connections at once")
    parser.add_argument("--kinds", nargs="*", default=list(KINDS), choices=KINDS)
    parser.add_argument("--kill-every", type=float, default=8.0, help="seconds between kills")
    parser.add_argument("--drain", type=float, default=300.0, help="longest wait for the queue")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="mailbus-chaos-") as tmp:
        report = asyncio.run(
            run(
                Path(tmp),
                n=args.n,
                replicas=args.replicas,
                concurrency=args.concurrency,
                kinds=args.kinds,
                kill_every_s=args.kill_every,
                drain_s=args.drain,
                queue_replicas=args.queue_replicas,
                restart=not args.no_restart,
            )
        )
    for line in report.lines():
        print(line)
    return 0 if report.lost == 0 and report.stuck == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
