"""`mailbus up` end to end: embedded NATS, five service processes, health, clean stop."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import urllib.request
from pathlib import Path

import nats

from libs.common.contract import subjects
from libs.common.runtime.embedded_nats import free_port
from tests.support.streams import eventually

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
    stat = Path(f"/proc/{pid}/stat").read_text()
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


async def test_a_killed_supervisor_leaves_no_process_behind(tmp_path: Path) -> None:
    """SIGKILL gives `mailbus up` no chance to stop anything: its children (NATS and the
    services) must end by themselves (Linux parent-death signal)."""
    cfg = tmp_path / "mailbus.yaml"
    cfg.write_text(
        "listeners:\n"
        f"  - {{name: smtp, protocol: smtp, address: '127.0.0.1:{free_port()}', tls: none}}\n"
        "security: {require_sender_domain_dns: false}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "up", "--config", str(cfg),
        "--data-dir", str(tmp_path / "var"),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        async with asyncio.timeout(90):
            while b"ready:" not in (line := await proc.stdout.readline()):
                assert line, "mailbus up exited early"
        family = _children(proc.pid)
        assert len(family) >= 6, family
        proc.kill()
        await proc.wait()
        await eventually(lambda: _none_alive(family), "every child to end", within=15)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def _none_alive(pids: set[int]) -> bool:
    return not [pid for pid in pids if _alive(pid)]
