"""`mailbus up` end to end: embedded NATS, five service processes, health, clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import smtplib
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path

import nats

from libs.common.contract import subjects
from libs.common.runtime.embedded_nats import free_port
from tests.support.sink import Sink
from tests.support.streams import eventually
from tests.support.up import mailbus_up, relay_config

ROOT = Path(__file__).resolve().parents[2]


def _children(pid: int) -> set[int]:
    """Every live process whose ancestry reaches `pid`."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found: set[int] = set()
    frontier = [pid]
    while frontier:
        cur = frontier.pop()
        for child, parent in parents.items():
            if parent == cur and child not in found:
                found.add(child)
                frontier.append(child)
    return found


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def test_up_runs_everything_and_stops_cleanly(tmp_path: Path) -> None:
    smtp_port = free_port()
    metrics_port = free_port()  # the services take this port and the four after it
    cfg = tmp_path / "mailbus.yaml"
    cfg.write_text(
        "server: {hostname: mx.up.test, local_domains: [up.test]}\n"
        "listeners:\n"
        f"  - {{name: smtp, protocol: smtp, address: '127.0.0.1:{smtp_port}', tls: none}}\n"
        "security: {require_sender_domain_dns: false}\n"
        f"telemetry: {{metrics_address: '127.0.0.1:{metrics_port}'}}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "up", "--config", str(cfg),
        "--data-dir", str(tmp_path / "var"),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    output: list[str] = []
    try:
        async with asyncio.timeout(90):
            while True:
                line = (await proc.stdout.readline()).decode()
                assert line, "mailbus up exited early:\n" + "".join(output)
                output.append(line)
                if "ready:" in line:
                    break
        ready = output[-1]
        assert f"127.0.0.1:{smtp_port}" in ready
        url = re.search(r"nats (nats://\S+)", ready)
        assert url, ready
        # Independently of `up`'s own check: every service answers $SRV.PING.
        # The embedded server admits each service as its own user; the operator's URL
        # (with credentials) is in the data dir, and the bare URL is refused.
        admin_url = (tmp_path / "var" / "nats-admin.url").read_text().strip()
        assert admin_url.endswith(url.group(1).rstrip(";,").removeprefix("nats://"))
        assert (tmp_path / "var" / "nats-admin.url").stat().st_mode & 0o077 == 0
        nc = await nats.connect(admin_url)
        try:
            for svc in subjects.SERVICES:
                msg = await nc.request(f"$SRV.PING.{subjects.service_name(svc)}", b"", timeout=5)
                assert json.loads(msg.data)["name"] == subjects.service_name(svc)
        finally:
            await nc.close()
        for i, svc in enumerate(subjects.SERVICES):
            for path in ("/healthz", "/readyz", "/metrics"):
                url_ = f"http://127.0.0.1:{metrics_port + i}{path}"
                resp = await asyncio.to_thread(urllib.request.urlopen, url_, timeout=5)
                assert resp.status == 200, (svc, path)
        family = _children(proc.pid)
        assert len(family) >= 6, family  # nats-server and five services
        reader = asyncio.create_task(proc.stdout.read())
        proc.send_signal(signal.SIGTERM)
        async with asyncio.timeout(10):
            code = await proc.wait()
        rest = (await reader).decode()
        assert code == 0, rest
        assert "stopped" in rest
        assert not [pid for pid in family if _alive(pid)]
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_a_killed_supervisor_stops_services_then_nats_and_loses_nothing(
    tmp_path: Path, sink_factory: Callable[..., tuple[Sink, int]]
) -> None:
    """SIGKILL gives `mailbus up` no chance to stop anything. Under light load: the
    services end first (they drain against a live bus), nats-server after them, all
    within seconds; every message accepted before the kill is delivered by the next
    start on the same data directory."""
    smtp = free_port()
    sink, sink_port = sink_factory()
    config = relay_config("mx.kill.test", smtp, sink_port)
    accepted: list[str] = []
    async with mailbus_up(tmp_path, config) as up:
        family = _children(up.proc.pid)
        assert len(family) >= 7, family  # nats-server, its watchdog and five services
        names = {f"services.{name}" for name in subjects.SERVICES}
        services = {_name(pid): pid for pid in family if _name(pid) in names}
        assert len(services) == len(subjects.SERVICES), services
        nats_pid = next(pid for pid in family if _name(pid) == "nats-server")
        stop = threading.Event()
        load = asyncio.create_task(asyncio.to_thread(_send_until, smtp, stop, accepted))
        await eventually(_true(lambda: len(accepted) >= 3), "some mail accepted", within=30)
        watch = asyncio.create_task(
            asyncio.to_thread(_watch_ends, {*services.values(), nats_pid}, 15.0)
        )
        await asyncio.sleep(0.1)  # the watch runs
        up.proc.kill()
        await up.proc.wait()
        ended = await watch
        stop.set()
        await load
        # The watchdog and policy's password workers too, shortly after.
        await eventually(lambda: _none_alive(family), "every child to end", within=5)
    killed_at = ended.pop(0)
    assert len(ended) == len(services) + 1, ("still running after 15 s", services, ended)
    assert max(ended.values()) - killed_at < 12, ended
    last_service = max(ended[pid] for pid in services.values())
    assert last_service <= ended[nats_pid], (services, nats_pid, ended)
    # Nothing accepted is lost: the next start delivers what the last one had not.
    assert accepted
    async with mailbus_up(tmp_path, config):
        await eventually(
            _true(lambda: set(accepted) <= {r for _, rcpts, _ in sink.received for r in rcpts}),
            "every accepted message delivered",
            within=60,
        )


def _name(pid: int) -> str:
    """`services.<name>` for a service, else the process's command name."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        comm = Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""
    found = [a.decode() for a in argv if a.startswith(b"services.")]
    return found[0] if found else comm


def _send_until(port: int, stop: threading.Event, accepted: list[str]) -> None:
    """One message at a time until `stop` or the first refusal; `accepted` gets each
    recipient once the server said 250 to its DATA."""
    for i in range(10_000):
        if stop.is_set():
            return
        rcpt = f"load{i}@remote.test"
        try:
            with smtplib.SMTP("127.0.0.1", port, timeout=5) as client:
                client.sendmail("sender@kill.test", [rcpt], b"Subject: load\r\n\r\nbody\r\n")
        except (smtplib.SMTPException, OSError):
            return
        accepted.append(rcpt)
        time.sleep(0.05)


def _watch_ends(pids: set[int], within: float) -> dict[int, float]:
    """When each of `pids` was first seen gone (monotonic seconds); key 0: the start."""
    ended: dict[int, float] = {0: time.monotonic()}
    deadline = ended[0] + within
    while time.monotonic() < deadline and len(ended) <= len(pids):
        for pid in pids - ended.keys():
            if not _alive(pid):
                ended[pid] = time.monotonic()
        time.sleep(0.01)
    return ended


def _true(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()

    return wrapped


async def _none_alive(pids: set[int]) -> bool:
    return not [pid for pid in pids if _alive(pid)]
