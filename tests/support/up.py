"""Run `mailbus up` as the operator does, as a child process, for end-to-end tests."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def relay_config(hostname: str, smtp_port: int, sink_port: int, extra: str = "") -> str:
    """Loopback may relay to a sink; no DNS; one plain SMTP listener."""
    return (
        f"server: {{hostname: {hostname}, local_domains: [{hostname.split('.', 1)[1]}]}}\n"
        "listeners:\n"
        f"  - {{name: smtp, protocol: smtp, address: '127.0.0.1:{smtp_port}', tls: none}}\n"
        "ip_groups: {lan: [127.0.0.0/8]}\n"
        "relay: {allowed_ip_group: lan}\n"
        "security: {require_sender_domain_dns: false}\n"
        "antispam: {spf: false}\n"
        "delivery:\n"
        f"  {{mode: relay, relay_host: {{host: 127.0.0.1, port: {sink_port}}}, tls: none}}\n"
        f"{extra}"
    )


@dataclass
class Up:
    proc: asyncio.subprocess.Process
    ready: str  # the `ready:` line
    output: list[str]


@asynccontextmanager
async def mailbus_up(
    tmp_path: Path, config_text: str, env: Mapping[str, str] | None = None
) -> AsyncIterator[Up]:
    """Start it, wait for its `ready:` line, and stop it with SIGTERM at the end.

    The rest of its output is drained in the background (a full pipe would block
    it) and kept in `Up.output`.
    """
    cfg = tmp_path / "mailbus.yaml"
    cfg.write_text(config_text)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "up", "--config", str(cfg),
        "--data-dir", str(tmp_path / "var"),
        cwd=ROOT, env=dict(os.environ, **(env or {})),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    output: list[str] = []
    drain: asyncio.Task[None] | None = None

    async def keep_reading() -> None:
        assert proc.stdout is not None
        while line := await proc.stdout.readline():
            output.append(line.decode(errors="replace"))

    try:
        async with asyncio.timeout(90):
            while True:
                line = (await proc.stdout.readline()).decode(errors="replace")
                assert line, "mailbus up exited early:\n" + "".join(output)
                output.append(line)
                if "ready:" in line:
                    break
        drain = asyncio.create_task(keep_reading())
        yield Up(proc, line, output)
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(15):
                    await proc.wait()
            except TimeoutError:
                proc.kill()
                await proc.wait()
        if drain is not None:
            await asyncio.wait_for(drain, 5)
