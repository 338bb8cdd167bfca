"""The `security` limits over real SMTP, with two policy and three ingress *processes*.

One nats-server, one DNS server (dnslib, UDP and TCP) and the processes are
shared by the module; clients alternate between the ingress ports A and B, so
every cluster-wide limit is seen holding across replicas. Ingress C serves the
memory test (200 MB against a 1 MB limit) and is then SIGKILLed with open
connections. Each test uses its own client addresses (127.0.2.x; 127.0.9.x
are in the exempt group), since the counts are per address:

    limit                      here   refused with
    max_connections_per_ip       3    421 4.7.0 at connect (POP3: -ERR [SYS/TEMP])
    max_messages_per_hour_per_ip 3    450 4.7.1 at MAIL
    directory_harvest            3    421 4.7.0 (block of 10 minutes)
    max_recipients               3    452 4.5.3
    max_failed_commands          4    421 4.7.0 and close
    max_message_size          1 MiB   552 5.3.4
    max_received_headers         5    554 5.4.6
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import signal
import ssl
import sys
import time
import urllib.request
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
import pytest_asyncio
from argon2 import PasswordHasher, Type
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from libs.common.contract import subjects
from libs.common.mail.history import by_subject
from libs.common.runtime import bus
from libs.common.runtime.embedded_nats import EmbeddedNats, free_port
from services.policy.adapters.counters import SlidingCounters
from services.policy.core import HOUR
from tests.support.cli import mailbus
from tests.support.dns import DnsServer

pytestmark = pytest.mark.asyncio(loop_scope="module")

ROOT = Path(__file__).resolve().parents[2]
LEASE_TTL_S = 3
PASSWORD = "correct horse battery"
PASSWORD_HASH = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID).hash(
    PASSWORD
)
SIZE_LIMIT = 1024 * 1024
SENDER = "sender@mx.test"  # the sender domain has an MX in the test DNS
EXEMPT_NET = "127.0.9.0/24"
# The ingress process's peak RSS may grow by this much while 200 MB are refused.
MEMORY_BOUND_KB = 24 * 1024
IO_TIMEOUT_S = 20.0


def config_text(smtp_port: int, smtps_port: int, pop3_port: int, dns_port: int) -> str:
    return f"""
server: {{hostname: mx.example.test, local_domains: [example.test]}}
listeners:
  - {{name: smtp, address: "127.0.0.1:{smtp_port}", tls: none}}
  - {{name: smtps, address: "127.0.0.1:{smtps_port}", tls: implicit}}
  - {{name: pop3, protocol: pop3, address: "127.0.0.1:{pop3_port}", tls: none}}
ip_groups:
  trusted: ["{EXEMPT_NET}"]
users:
  - {{address: alice@example.test, password_hash: "{PASSWORD_HASH}"}}
  - {{address: bob@example.test}}
  - {{address: carol@example.test}}
  - {{address: dave@example.test}}
relay: {{mode: restricted}}
security:
  exempt_ip_group: trusted
  max_connections_per_ip: 3
  max_messages_per_hour_per_ip: 3
  directory_harvest: {{max_unknown_recipients: 3, block_for: 10m}}
  require_sender_domain_dns: true
  max_recipients: 3
  max_failed_commands: 4
  max_auth_failures_per_ip: 4
  max_message_size: {SIZE_LIMIT}
  max_received_headers: 5
dns: {{servers: ["127.0.0.1:{dns_port}"], timeout: 1s}}
antispam: {{spf: false}}
policy: {{timeout: 5s}}
"""


# --- processes -----------------------------------------------------------------------------


@dataclass
class Proc:
    name: str
    proc: asyncio.subprocess.Process
    metrics_port: int
    smtp: tuple[str, int] = ("127.0.0.1", 0)
    smtps: tuple[str, int] = ("127.0.0.1", 0)
    pop3: tuple[str, int] = ("127.0.0.1", 0)

    async def ready(self) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise AssertionError(f"{self.name} exited with {self.proc.returncode}")
            if await asyncio.to_thread(self._get, "/readyz") == 200:
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} not ready")

    def _get(self, path: str) -> int:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}{path}", timeout=2):
                return 200
        except OSError:
            return 0

    async def metric(self, name: str, **labels: str) -> float:
        """The value of one sample of /metrics (0 when absent)."""

        def scrape() -> str:
            url = f"http://127.0.0.1:{self.metrics_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                text: str = response.read().decode()
                return text

        wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
        for line in (await asyncio.to_thread(scrape)).splitlines():
            if line.startswith(f"{name}{{{wanted}}} "):
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    def memory_kb(self) -> dict[str, int]:
        """VmRSS (now) and VmHWM (peak) of the process, from /proc."""
        found: dict[str, int] = {}
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
        return found

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 15)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()


async def spawn(service: str, name: str, config: Path, nats_url: str, log_dir: Path) -> Proc:
    metrics_port = free_port()
    env = {**os.environ, "MAILBUS_CONNECTION_LEASE_TTL": str(LEASE_TTL_S)}
    log = (log_dir / f"{name}.log").open("wb")
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        f"services.{service}",
        "--config",
        str(config),
        "--nats-url",
        nats_url,
        "--metrics-address",
        f"127.0.0.1:{metrics_port}",
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=log,
    )
    log.close()
    return Proc(name, proc, metrics_port)


@dataclass
class Cluster:
    nats_url: str
    nc: NATS
    js: JetStreamContext
    dns: DnsServer
    policies: list[Proc]
    ingress: dict[str, Proc]
    logs: Path
    extra: list[Proc] = field(default_factory=list)

    @property
    def a(self) -> tuple[str, int]:
        return self.ingress["A"].smtp

    @property
    def b(self) -> tuple[str, int]:
        return self.ingress["B"].smtp

    async def policy_metric(self, name: str, **labels: str) -> float:
        return sum([await p.metric(name, **labels) for p in self.policies])


def zone(dns: DnsServer) -> None:
    dns.add("mx.test", "MX", "10 mail.mx.test.")
    dns.add("mail.mx.test", "A", "127.0.0.1")
    dns.add("only-a.test", "A", "192.0.2.1")
    dns.add("only-aaaa.test", "AAAA", "2001:db8::1")
    dns.add("txt-only.test", "TXT", '"v=spf1 -all"')
    dns.add("null-mx.test", "MX", "0 .")
    dns.add("big.test", "A", "192.0.2.2")
    dns.truncate("big.test")
    dns.servfail("servfail.test")
    dns.timeout("timeout.test")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def cluster(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Cluster]:
    tmp = tmp_path_factory.mktemp("limits")
    server = EmbeddedNats(data_dir=tmp / "nats", log_file=tmp / "nats.log")
    server.start()
    dns = DnsServer()
    zone(dns)
    dns.start()
    nc = await bus.connect([server.url], name="test")
    js = await bus.wait_for_jetstream(nc)
    await bus.ensure_topology(js)
    procs: list[Proc] = []
    try:
        ingress: dict[str, Proc] = {}
        for name in ("A", "B", "C"):
            ports = free_port(), free_port(), free_port()
            path = tmp / f"ingress-{name}.yaml"
            path.write_text(config_text(*ports, dns.port))
            proc = await spawn("ingress", f"ingress-{name}", path, server.url, tmp)
            proc.smtp, proc.smtps, proc.pop3 = (("127.0.0.1", p) for p in ports)
            ingress[name] = proc
            procs.append(proc)
        policies = []
        for i in (1, 2):
            proc = await spawn("policy", f"policy-{i}", tmp / "ingress-A.yaml", server.url, tmp)
            policies.append(proc)
            procs.append(proc)
        await asyncio.gather(*(p.ready() for p in procs))
        yield Cluster(server.url, nc, js, dns, policies, ingress, tmp)
    finally:
        await asyncio.gather(*(p.stop() for p in procs))
        await nc.close()
        dns.stop()
        server.stop()


# --- a small SMTP client: every reply as sent, over plain TCP or implicit TLS ---------------


class Smtp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.greeting = ""

    @classmethod
    async def open(
        cls, addr: tuple[str, int], source: str, tls: bool = False, ehlo: bool = False
    ) -> Smtp:
        context = None
        if tls:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(*addr, local_addr=(source, 0), ssl=context), IO_TIMEOUT_S
        )
        client = cls(reader, writer)
        client.greeting = await client.reply()
        if ehlo and client.greeting.startswith("220"):
            assert (await client.cmd("EHLO client.test")).startswith("250")
        return client

    async def reply(self) -> str:
        """One whole reply; a multi-line reply as its lines joined by newlines."""
        lines: list[str] = []
        while True:
            raw = await asyncio.wait_for(self.reader.readline(), IO_TIMEOUT_S)
            if not raw:
                lines.append("EOF")
                break
            line = raw.decode().rstrip("\r\n")
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                break
        return "\n".join(lines)

    async def cmd(self, line: str) -> str:
        self.writer.write(line.encode() + b"\r\n")
        await self.writer.drain()
        return await self.reply()

    async def send(self, data: bytes) -> str:
        self.writer.write(data)
        await self.writer.drain()
        return await self.reply()

    async def closed(self) -> bool:
        """The server hung up (after its last reply)."""
        try:
            data = await asyncio.wait_for(self.reader.read(1), IO_TIMEOUT_S)
        except ConnectionError:
            return True
        return data == b""

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(Exception):
            await self.writer.wait_closed()


def message(subject: str = "hello", received: int = 0, body: bytes = b"hi\r\n") -> bytes:
    hops = b"".join(
        f"Received: from hop{i}.test by relay{i}.test; Mon, 2 Mar 2026 10:00:00 +0000\r\n".encode()
        for i in range(received)
    )
    return hops + f"Subject: {subject}\r\n\r\n".encode() + body


async def send_message(
    addr: tuple[str, int],
    source: str,
    rcpts: tuple[str, ...] = ("alice@example.test",),
    received: int = 0,
) -> str:
    """One whole transaction; the last reply (MAIL's or RCPT's if one refused, else DATA's)."""
    client = await Smtp.open(addr, source)
    try:
        assert (await client.cmd("EHLO client.test")).startswith("250")
        mail = await client.cmd(f"MAIL FROM:<{SENDER}>")
        if not mail.startswith("250"):
            return mail
        for rcpt in rcpts:
            answer = await client.cmd(f"RCPT TO:<{rcpt}>")
            if not answer.startswith("250"):
                return answer
        assert (await client.cmd("DATA")).startswith("354")
        return await client.send(message(received=received) + b".\r\n")
    finally:
        await client.close()


def code(reply: str) -> str:
    """`250 2.1.0` from a reply's last line."""
    return " ".join(reply.splitlines()[-1].split()[:2])


async def events_count(js: JetStreamContext) -> int:
    return (await js.stream_info(subjects.EVENTS_STREAM)).state.messages


# --- max_connections_per_ip -------------------------------------------------------------------


async def test_connections_are_counted_across_ingress_replicas(cluster: Cluster) -> None:
    ip = "127.0.2.1"
    held = [
        await Smtp.open(cluster.a, ip),
        await Smtp.open(cluster.b, ip),
        await Smtp.open(cluster.a, ip),
    ]
    try:
        assert [code(c.greeting)[:3] for c in held] == ["220"] * 3  # the third: last allowed
        fourth = await Smtp.open(cluster.b, ip)
        assert code(fourth.greeting) == "421 4.7.0"  # the first refused, on the other replica
        assert "Too many connections from 127.0.2.1" in fourth.greeting
        assert await fourth.closed()
        refused_at_a = await Smtp.open(cluster.a, ip)
        assert code(refused_at_a.greeting) == "421 4.7.0"
        await refused_at_a.close()
        await fourth.close()
        # One closes: its lease goes with it, and a new connection is let in.
        await held.pop(0).close()
        again = await eventually_greeted(cluster.b, ip)
        held.append(again)
    finally:
        for c in held:
            await c.close()
    assert (
        await cluster.ingress["B"].metric(
            "mailbus_smtpd_refusals_total", stage="connect", rule="max_connections_per_ip"
        )
        >= 1
    )
    assert (
        await cluster.policy_metric(
            "mailbus_policy_decisions_total",
            stage="connect",
            action="disconnect",
            rule="max_connections_per_ip",
        )
        >= 2
    )


async def test_exempt_connections_are_not_limited(cluster: Cluster) -> None:
    ip = "127.0.9.1"
    held = [await Smtp.open(cluster.a if i % 2 else cluster.b, ip) for i in range(6)]
    try:
        assert [code(c.greeting)[:3] for c in held] == ["220"] * 6
    finally:
        for c in held:
            await c.close()


async def eventually_greeted(
    addr: tuple[str, int], ip: str, within: float = 10.0, greeting: str = "220"
) -> Smtp:
    deadline = time.monotonic() + within
    while True:
        client = await Smtp.open(addr, ip)
        if client.greeting.startswith(greeting):
            return client
        await client.close()
        if time.monotonic() > deadline:
            raise AssertionError(f"{ip} still refused: {client.greeting}")
        await asyncio.sleep(0.2)


async def test_pop3_sessions_count_with_smtp_sessions(cluster: Cluster) -> None:
    """POP3 sessions hold leases too: one limit for both protocols, across replicas."""
    ip = "127.0.2.30"
    pop3_a, pop3_b = cluster.ingress["A"].pop3, cluster.ingress["B"].pop3
    # The line client reads a POP3 greeting as well: it is one line.
    held = [
        await Smtp.open(pop3_a, ip),
        await Smtp.open(pop3_b, ip),
        await Smtp.open(cluster.a, ip),
    ]
    try:
        assert [c.greeting.split()[0] for c in held] == ["+OK", "+OK", "220"]
        fourth = await Smtp.open(pop3_b, ip)
        assert fourth.greeting.startswith("-ERR [SYS/TEMP] Too many connections from 127.0.2.30")
        assert await fourth.closed()
        await fourth.close()
        smtp = await Smtp.open(cluster.b, ip)
        assert code(smtp.greeting) == "421 4.7.0"  # the POP3 sessions count for SMTP too
        await smtp.close()
        # A POP3 session that ends gives its place back.
        await held.pop(0).close()
        held.append(await eventually_greeted(pop3_a, ip, greeting="+OK"))
    finally:
        for c in held:
            await c.close()


async def test_exempt_pop3_sessions_are_not_limited(cluster: Cluster) -> None:
    ip = "127.0.9.2"
    held = [await Smtp.open(cluster.ingress["AB"[i % 2]].pop3, ip) for i in range(5)]
    try:
        assert [c.greeting.split()[0] for c in held] == ["+OK"] * 5
    finally:
        for c in held:
            await c.close()


# --- max_messages_per_hour_per_ip -------------------------------------------------------------


async def test_messages_per_hour_across_ingress_replicas(cluster: Cluster) -> None:
    ip = "127.0.2.3"
    sent = [await send_message(addr, ip) for addr in (cluster.a, cluster.b, cluster.a)]
    assert [code(r) for r in sent] == ["250 2.0.0"] * 3  # the third: last allowed
    for addr in (cluster.b, cluster.a):  # the fourth is refused at MAIL, on either replica
        refused = await send_message(addr, ip)
        assert code(refused) == "450 4.7.1", refused
        assert "Too many messages from 127.0.2.3 in the last hour" in refused
    assert (
        await cluster.policy_metric(
            "mailbus_policy_decisions_total",
            stage="mail",
            action="defer",
            rule="max_messages_per_hour_per_ip",
        )
        == 2
    )


async def test_exempt_messages_are_not_limited(cluster: Cluster) -> None:
    ip = "127.0.9.3"
    sent = [await send_message(cluster.a if i % 2 else cluster.b, ip) for i in range(5)]
    assert [code(r) for r in sent] == ["250 2.0.0"] * 5


async def test_a_refused_message_does_not_count(cluster: Cluster) -> None:
    ip = "127.0.2.13"
    looped = [await send_message(cluster.a, ip, received=6) for _ in range(4)]
    assert [code(r) for r in looped] == ["554 5.4.6"] * 4
    assert code(await send_message(cluster.b, ip)) == "250 2.0.0"


# --- directory harvest ------------------------------------------------------------------------


async def test_a_harvest_block_made_at_one_replica_holds_at_the_other(cluster: Cluster) -> None:
    ip = "127.0.2.4"
    first = await Smtp.open(cluster.a, ip, ehlo=True)
    assert code(await first.cmd(f"MAIL FROM:<{SENDER}>")) == "250 2.1.0"
    for name in ("nobody1", "nobody2"):
        assert code(await first.cmd(f"RCPT TO:<{name}@example.test>")) == "550 5.1.1"
    await first.close()

    second = await Smtp.open(cluster.b, ip, ehlo=True)  # two unknown so far: still welcome
    assert code(second.greeting) == "220 mx.example.test"
    assert code(await second.cmd(f"MAIL FROM:<{SENDER}>")) == "250 2.1.0"
    assert code(await second.cmd("RCPT TO:<alice@example.test>")) == "250 2.1.5"
    # The third is still told it is unknown; the block starts right after that reply.
    third = await second.cmd("RCPT TO:<nobody3@example.test>")
    assert code(third) == "550 5.1.1", third
    assert await second.closed()
    await second.close()

    for addr in (cluster.a, cluster.b):
        refused = await Smtp.open(addr, ip)
        assert code(refused.greeting) == "421 4.7.0", refused.greeting
        assert "127.0.2.4 is blocked until" in refused.greeting
        await refused.close()

    [event] = await access_events(cluster.js, "ClientBlocked")
    assert event["client_ip"] == ip and event["rule"] == "directory_harvest"
    assert "3 unknown local recipients" in str(event["reason"])
    assert isinstance(event["start"], str) and isinstance(event["end"], str)
    assert event["start"] < event["end"]

    listed = await blocks_cli(cluster, "list", "--json")
    assert [b["address"] for b in json.loads(listed)] == [ip]
    history = await blocks_cli(cluster, "list", "--history")
    assert f"blocked  {ip} until" in history

    removed = await blocks_cli(cluster, "remove", ip)
    assert f"{ip}: block lifted" in removed
    welcome = await Smtp.open(cluster.a, ip)
    assert code(welcome.greeting) == "220 mx.example.test"
    await welcome.close()
    [lifted] = await access_events(cluster.js, "ClientUnblocked")
    assert lifted["client_ip"] == ip and lifted["block_start"] == event["start"]
    assert json.loads(await blocks_cli(cluster, "list", "--json")) == []


async def test_exempt_clients_are_never_blocked(cluster: Cluster) -> None:
    ip = "127.0.9.4"
    client = await Smtp.open(cluster.a, ip, ehlo=True)
    assert code(await client.cmd(f"MAIL FROM:<{SENDER}>")) == "250 2.1.0"
    for i in range(6):
        assert code(await client.cmd(f"RCPT TO:<nobody{i}@example.test>")) == "550 5.1.1"
    await client.close()
    again = await Smtp.open(cluster.b, ip)
    assert code(again.greeting) == "220 mx.example.test"
    await again.close()


async def access_events(js: JetStreamContext, kind: str) -> list[dict[str, object]]:
    subject = subjects.access_subject(kind)
    found = [raw async for raw in by_subject(js, subjects.ACCESS_STREAM, subject, 100)]
    return [json.loads(raw.data or b"") for raw in found]


async def blocks_cli(cluster: Cluster, *args: str) -> str:
    """`mailbus blocks ...` as an operator runs it (a process of its own)."""
    rc, out, err = await mailbus("blocks", *args[:1], "--nats-url", cluster.nats_url, *args[1:])
    assert rc == 0, out + err
    return out


# --- require_sender_domain_dns against the DNS server on loopback ------------------------------


@pytest.mark.parametrize(
    ("ip", "sender", "expected"),
    [
        ("127.0.2.5", "<a@mx.test>", "250 2.1.0"),
        ("127.0.2.5", "<a@only-a.test>", "250 2.1.0"),
        ("127.0.2.5", "<a@only-aaaa.test>", "250 2.1.0"),
        ("127.0.2.5", "<a@big.test>", "250 2.1.0"),  # answered over TCP after truncation
        ("127.0.2.5", "<>", "250 2.1.0"),
        ("127.0.2.5", "<a@nxdomain.test>", "550 5.1.8"),
        ("127.0.2.5", "<a@txt-only.test>", "550 5.1.8"),
        ("127.0.2.5", "<a@null-mx.test>", "550 5.7.27"),
        ("127.0.2.5", "<a@servfail.test>", "451 4.4.3"),
        ("127.0.2.5", "<a@timeout.test>", "451 4.4.3"),
        ("127.0.9.5", "<a@nxdomain.test>", "250 2.1.0"),
        ("127.0.9.5", "<a@servfail.test>", "250 2.1.0"),
    ],
)
async def test_sender_domain_must_exist(
    cluster: Cluster, ip: str, sender: str, expected: str
) -> None:
    client = await Smtp.open(cluster.a, ip, ehlo=True)
    try:
        assert code(await client.cmd(f"MAIL FROM:{sender}")) == expected
    finally:
        await client.close()


async def test_the_truncated_answer_was_asked_again_over_tcp(cluster: Cluster) -> None:
    assert {q.transport for q in cluster.dns.asked("big.test")} == {"udp", "tcp"}


# --- max_recipients ---------------------------------------------------------------------------


@pytest.mark.parametrize(("ip", "fourth"), [("127.0.2.6", "452 4.5.3"), ("127.0.9.6", "250 2.1.5")])
async def test_max_recipients(cluster: Cluster, ip: str, fourth: str) -> None:
    client = await Smtp.open(cluster.b, ip, ehlo=True)
    try:
        assert code(await client.cmd(f"MAIL FROM:<{SENDER}>")) == "250 2.1.0"
        for name in ("alice", "bob", "carol"):  # the third: last allowed
            assert code(await client.cmd(f"RCPT TO:<{name}@example.test>")) == "250 2.1.5"
        assert code(await client.cmd("RCPT TO:<dave@example.test>")) == fourth
    finally:
        await client.close()


async def test_max_recipients_counts_rcpt_commands(cluster: Cluster) -> None:
    """The same mailbox named again is one more RCPT command: it counts."""
    client = await Smtp.open(cluster.b, "127.0.2.16", ehlo=True)
    try:
        assert code(await client.cmd(f"MAIL FROM:<{SENDER}>")) == "250 2.1.0"
        for _ in range(3):
            assert code(await client.cmd("RCPT TO:<alice@example.test>")) == "250 2.1.5"
        assert code(await client.cmd("RCPT TO:<bob@example.test>")) == "452 4.5.3"
    finally:
        await client.close()


async def test_implicit_tls_connections_are_counted_before_the_handshake(
    cluster: Cluster,
) -> None:
    """Connections that never send a ClientHello hold the address's connection slots."""
    ip = "127.0.2.17"
    silent = [
        await asyncio.open_connection(*cluster.ingress["A"].smtps, local_addr=(ip, 0))
        for _ in range(3)
    ]
    try:
        await asyncio.sleep(0.5)
        refused = await Smtp.open(cluster.ingress["B"].smtps, ip, tls=True)
        assert code(refused.greeting) == "421 4.7.0", refused.greeting
        await refused.close()
    finally:
        for _, writer in silent:
            writer.close()


# --- max_failed_commands ----------------------------------------------------------------------


async def test_failed_commands_close_the_connection(cluster: Cluster) -> None:
    client = await Smtp.open(cluster.a, "127.0.2.7", ehlo=True)
    for _ in range(3):
        assert code(await client.cmd("FOO")) == "502 5.5.2"
    assert code(await client.cmd("NOOP")) == "250 2.0.0"  # three failures: still served
    last = await client.cmd("MAIL FROM:<not an address")
    assert code(last) == "501 5.1.7"
    assert code(await client.reply()) == "421 4.7.0"  # the fourth failure: closed
    assert await client.closed()
    await client.close()
    assert (
        await cluster.ingress["A"].metric(
            "mailbus_smtpd_refusals_total", stage="mail", rule="max_failed_commands"
        )
        == 1
    )


async def test_exempt_failed_commands(cluster: Cluster) -> None:
    client = await Smtp.open(cluster.a, "127.0.9.7", ehlo=True)
    for _ in range(8):
        assert code(await client.cmd("RCPT TO:<alice@example.test>")) == "503 5.5.1"
    # max_failed_commands alone decides: aiosmtpd's own loop closed after 5 unknown ones.
    for _ in range(8):
        assert code(await client.cmd("FOO")) == "502 5.5.2"
    assert code(await client.cmd("NOOP")) == "250 2.0.0"
    await client.close()


# --- max_message_size -------------------------------------------------------------------------


def body_of_size(total: int) -> bytes:
    """A message of exactly `total` octets in lines of 100, none starting with a dot."""
    head = b"Subject: size\r\n\r\n"
    full, part = divmod(total - len(head), 100)
    lines = [b"x" * 98 + b"\r\n"] * full
    if part == 1:
        lines[-1] = b"x" * 99 + b"\r\n"
    elif part:
        lines.append(b"y" * (part - 2) + b"\r\n")
    data = head + b"".join(lines)
    assert len(data) == total
    return data


async def test_message_size(cluster: Cluster) -> None:
    ip = "127.0.2.8"
    client = await Smtp.open(cluster.a, ip)
    try:
        ehlo = await client.cmd("EHLO client.test")
        assert f"250-SIZE {SIZE_LIMIT}" in ehlo.splitlines()
        too_big = await client.cmd(f"MAIL FROM:<{SENDER}> SIZE={SIZE_LIMIT + 1}")
        assert code(too_big) == "552 5.3.4"
        assert code(await client.cmd(f"MAIL FROM:<{SENDER}> SIZE={SIZE_LIMIT}")) == "250 2.1.0"
        assert code(await client.cmd("RCPT TO:<alice@example.test>")) == "250 2.1.5"
        assert (await client.cmd("DATA")).startswith("354")
        exact = await client.send(body_of_size(SIZE_LIMIT) + b".\r\n")
        assert code(exact) == "250 2.0.0", exact  # the last allowed
    finally:
        await client.close()

    client = await Smtp.open(cluster.b, ip, ehlo=True)
    before = await events_count(cluster.js)
    try:
        assert code(await client.cmd(f"MAIL FROM:<{SENDER}>")) == "250 2.1.0"
        assert code(await client.cmd("RCPT TO:<alice@example.test>")) == "250 2.1.5"
        assert (await client.cmd("DATA")).startswith("354")
        over = await client.send(body_of_size(SIZE_LIMIT + 1) + b".\r\n")
        assert code(over) == "552 5.3.4", over  # the first refused
        assert code(await client.cmd("NOOP")) == "250 2.0.0"  # the session goes on
    finally:
        await client.close()
    assert await events_count(cluster.js) == before  # nothing stored


async def test_exempt_message_size(cluster: Cluster) -> None:
    client = await Smtp.open(cluster.b, "127.0.9.8")
    try:
        ehlo = await client.cmd("EHLO client.test")
        assert "250-SIZE" in ehlo.splitlines()  # RFC 1870: SIZE without a number, no limit
        assert code(await client.cmd(f"MAIL FROM:<{SENDER}> SIZE={3 * SIZE_LIMIT}")) == "250 2.1.0"
        assert code(await client.cmd("RCPT TO:<alice@example.test>")) == "250 2.1.5"
        assert (await client.cmd("DATA")).startswith("354")
        big = await client.send(body_of_size(SIZE_LIMIT * 3 // 2) + b".\r\n")
        assert code(big) == "250 2.0.0"
    finally:
        await client.close()


# --- max_received_headers ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "hops", "expected"),
    [
        ("127.0.2.9", 5, "250 2.0.0"),
        ("127.0.2.9", 6, "554 5.4.6"),
        # A loop is a loop, trusted or not: the exempt group is not exempt from this one.
        ("127.0.9.9", 6, "554 5.4.6"),
    ],
)
async def test_received_headers(cluster: Cluster, ip: str, hops: int, expected: str) -> None:
    assert code(await send_message(cluster.a, ip, received=hops)) == expected


# --- failed logins from one address, across sessions and replicas ------------------------------


def plain(password: str) -> str:
    return base64.b64encode(f"\0alice@example.test\0{password}".encode()).decode()


@pytest.mark.parametrize(("ip", "last"), [("127.0.2.10", "454 4.7.0"), ("127.0.9.10", "235 2.7.0")])
async def test_failed_logins_lock_auth(cluster: Cluster, ip: str, last: str) -> None:
    for proc in ("A", "B"):  # two failures through each replica: four, the limit
        client = await Smtp.open(cluster.ingress[proc].smtps, ip, tls=True)
        assert (await client.cmd("EHLO client.test")).startswith("250")
        for _ in range(2):
            assert code(await client.cmd(f"AUTH PLAIN {plain('wrong')}")) == "535 5.7.8"
        await client.close()
    client = await Smtp.open(cluster.ingress["A"].smtps, ip, tls=True)
    try:
        assert (await client.cmd("EHLO client.test")).startswith("250")
        assert code(await client.cmd(f"AUTH PLAIN {plain(PASSWORD)}")) == last
    finally:
        await client.close()


# --- memory: 200 MB against a 1 MB limit (ingress C) -------------------------------------------


async def test_200_mb_is_refused_in_flat_memory(cluster: Cluster) -> None:
    proc = cluster.ingress["C"]
    ip = "127.0.2.11"
    assert code(await send_message(proc.smtp, ip)) == "250 2.0.0"  # warm: every code path run
    before = proc.memory_kb()
    client = await Smtp.open(proc.smtp, ip, ehlo=True)
    try:
        assert code(await client.cmd(f"MAIL FROM:<{SENDER}>")) == "250 2.1.0"
        assert code(await client.cmd("RCPT TO:<alice@example.test>")) == "250 2.1.5"
        assert (await client.cmd("DATA")).startswith("354")
        chunk = (b"z" * 998 + b"\r\n") * 1024  # 1 MB of 1000-octet lines
        for _ in range(150):
            client.writer.write(chunk)
            await client.writer.drain()
        # and 50 MB more as one line without any CRLF, which aiosmtpd alone would keep whole
        line = b"w" * (1024 * 1024)
        for _ in range(50):
            client.writer.write(line)
            await client.writer.drain()
        refused = await client.send(b"\r\n.\r\n")
        assert code(refused) == "552 5.3.4", refused
        assert code(await client.cmd("NOOP")) == "250 2.0.0"
    finally:
        await client.close()
    after = proc.memory_kb()
    assert (
        await proc.metric("mailbus_smtpd_refusals_total", stage="data", rule="max_message_size")
        == 1
    )
    growth = after["VmHWM"] - before["VmHWM"]
    print(f"ingress C: VmHWM {before['VmHWM']} -> {after['VmHWM']} kB (+{growth} kB)")
    assert growth < MEMORY_BOUND_KB


# --- a SIGKILLed ingress: its connections stop counting within the lease TTL ------------------


async def test_connections_of_a_killed_ingress_expire(cluster: Cluster) -> None:
    proc = cluster.ingress["C"]
    ip = "127.0.2.12"
    held = [await Smtp.open(proc.smtp, ip) for _ in range(3)]
    assert [code(c.greeting)[:3] for c in held] == ["220"] * 3
    # Held past the TTL, the leases are renewed: the connections still count.
    await asyncio.sleep(LEASE_TTL_S + 1.5)
    refused = await Smtp.open(cluster.a, ip)
    assert code(refused.greeting) == "421 4.7.0"
    await refused.close()

    proc.proc.send_signal(signal.SIGKILL)
    await proc.proc.wait()
    killed_at = time.monotonic()
    for c in held:
        await c.close()
    # No "closed" message ever comes from C: only the leases' TTL frees the slots.
    client = await eventually_greeted(cluster.a, ip, within=LEASE_TTL_S + 10)
    freed_after = time.monotonic() - killed_at
    await client.close()
    print(f"slots of the killed ingress freed after {freed_after:.1f} s (TTL {LEASE_TTL_S} s)")
    assert freed_after < LEASE_TTL_S + 3


# --- RFC 2920: the RCPTs pipelined behind MAIL are decided in MAIL's request -----------------


@contextlib.asynccontextmanager
async def policy_requests(nc: NATS) -> AsyncIterator[dict[str, int]]:
    """Requests to policy per stage while the block runs, counted on the bus."""
    seen: dict[str, int] = {}

    async def count(msg: Msg) -> None:
        stage = msg.subject.rsplit(".", 1)[1]
        seen[stage] = seen.get(stage, 0) + 1

    sub = await nc.subscribe(f"{subjects.POLICY_PREFIX}.*", cb=count)
    # Twice: nats-py may write the first PING ahead of the SUB still in its buffer.
    await nc.flush()
    await nc.flush()
    try:
        yield seen
    finally:
        await nc.flush()
        await asyncio.sleep(0.2)
        await sub.unsubscribe()


async def unknown_count(js: JetStreamContext, ip: str) -> int:
    found = await SlidingCounters(js, HOUR).get(subjects.unknown_recipients_key(ip))
    return 0 if found is None else found.total(HOUR, datetime.now(UTC))


async def replies_of(client: Smtp, lines: list[str], pipelined: bool) -> list[str]:
    if not pipelined:
        return [code(await client.cmd(line)) for line in lines]
    client.writer.write("".join(f"{line}\r\n" for line in lines).encode())
    await client.writer.drain()
    return [code(await client.reply()) for _ in lines]


@pytest.mark.parametrize(
    ("lines", "expected"),
    [
        (
            [f"MAIL FROM:<{SENDER}>", "RCPT TO:<alice@example.test>", "RCPT TO:<no1@example.test>"],
            ["250 2.1.0", "250 2.1.5", "550 5.1.1"],
        ),
        (
            ["MAIL FROM:<x@nowhere.test>", "RCPT TO:<alice@example.test>"],
            ["550 5.1.8", "503 5.5.1"],
        ),
        (
            [f"MAIL FROM:<{SENDER}>", "RCPT TO:<no2@example.test>", "RCPT TO:<bob@example.test>"],
            ["250 2.1.0", "550 5.1.1", "250 2.1.5"],
        ),
    ],
)
async def test_pipelined_rcpts_are_decided_with_mail(
    cluster: Cluster, lines: list[str], expected: list[str]
) -> None:
    """The same replies and the same counts (unknown recipients, towards a harvest block)
    as one by one, refusals in the middle included; the RCPTs cost no request of their
    own, and after a refused MAIL none is decided at all."""
    results = {}
    counters = await cluster.js.key_value(subjects.POLICY_COUNTERS_BUCKET)
    for pipelined, ip in ((False, "127.0.2.50"), (True, "127.0.2.51")):
        # Each case starts from nothing (no unknown recipients counted, so no block).
        await counters.purge(subjects.unknown_recipients_key(ip))
        client = await Smtp.open(cluster.a, ip, ehlo=True)
        try:
            async with policy_requests(cluster.nc) as seen:
                replies = await replies_of(client, lines, pipelined)
        finally:
            await client.close()
        results[pipelined] = (replies, await unknown_count(cluster.js, ip))
        rcpts = 0 if pipelined else sum(1 for r in replies[1:] if r[:3] != "503")
        assert seen == {"mail": 1, **({"rcpt": rcpts} if rcpts else {})}, (pipelined, seen)
    assert results[True] == results[False]
    assert results[True][0] == expected


async def test_pipelined_rcpts_stop_where_failed_commands_close_the_session(
    cluster: Cluster,
) -> None:
    """max_failed_commands is 4: the fourth refused RCPT closes the session, so policy
    decides no fifth one, pipelined or not (counted by its decisions metric)."""
    lines = [f"MAIL FROM:<{SENDER}>", *(f"RCPT TO:<u{i}@remote.test>" for i in range(6))]
    expected = ["250 2.1.0", *["554 5.7.1"] * 4, "421 4.7.0"]
    for pipelined, ip in ((False, "127.0.2.52"), (True, "127.0.2.53")):
        before = await cluster.policy_metric(
            "mailbus_policy_decisions_total", stage="rcpt", action="reject", rule="relay_denied"
        )
        client = await Smtp.open(cluster.b, ip, ehlo=True)
        try:
            async with policy_requests(cluster.nc) as seen:
                if pipelined:
                    client.writer.write("".join(f"{line}\r\n" for line in lines).encode())
                    await client.writer.drain()
                    replies = [code(await client.reply()) for _ in expected]
                else:
                    replies = [code(await client.cmd(line)) for line in lines[:5]]
                    replies.append(code(await client.reply()))  # the 421 after the fourth
            assert await client.closed()
        finally:
            await client.close()
        assert replies == expected, pipelined
        assert seen == {"mail": 1, **({} if pipelined else {"rcpt": 4})}, (pipelined, seen)
        after = await cluster.policy_metric(
            "mailbus_policy_decisions_total", stage="rcpt", action="reject", rule="relay_denied"
        )
        assert after - before == 4, pipelined
