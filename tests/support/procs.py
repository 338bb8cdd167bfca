"""mailbus services as child processes, for tests that kill them (SIGKILL) mid-work."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

from libs.common.runtime.embedded_nats import free_port

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class ServiceProc:
    name: str
    proc: asyncio.subprocess.Process
    metrics_port: int
    log: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ready(self, within: float = 30.0) -> float:
        """Wait for /readyz; the seconds it took since the start."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if self.proc.returncode is not None:
                raise AssertionError(
                    f"{self.name} exited with {self.proc.returncode}: {self.tail()}"
                )
            if await asyncio.to_thread(self._ready):
                return time.monotonic() - self.started
            await asyncio.sleep(0.05)
        raise AssertionError(f"{self.name} not ready within {within} s: {self.tail()}")

    def _ready(self) -> bool:
        try:
            url = f"http://127.0.0.1:{self.metrics_port}/readyz"
            with urllib.request.urlopen(url, timeout=1) as resp:
                return bool(resp.status == 200)
        except OSError:
            return False

    def metric(self, name: str) -> float:
        """The value of one unlabelled sample on the process's /metrics (0 when absent)."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=2) as resp:
            text = resp.read().decode()
        for line in text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        return 0.0

    def tail(self, lines: int = 30) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    async def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await self.proc.wait()

    async def stop(self, grace_s: float = 15.0) -> None:
        if self.proc.returncode is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            async with asyncio.timeout(grace_s):
                await self.proc.wait()
        except TimeoutError:
            await self.kill()


class Processes:
    """Starts services against one config file and NATS URL; stops what is left at the end."""

    def __init__(self, tmp: Path, config_text: str, nats_url: str) -> None:
        self.config = tmp / "mailbus.yaml"
        self.config.write_text(config_text)
        self.tmp = tmp
        self.nats_url = nats_url
        self.started: list[ServiceProc] = []

    async def start(self, name: str, env: Mapping[str, str] | None = None) -> ServiceProc:
        port = free_port()
        log = self.tmp / f"{name}-{len(self.started)}.log"
        out = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", f"services.{name}", "--config", str(self.config),
                "--nats-url", self.nats_url, "--metrics-address", f"127.0.0.1:{port}",
                cwd=ROOT, env=dict(os.environ, OTEL_TRACES_EXPORTER="none", **(env or {})),
                stdout=out, stderr=out,
            )  # fmt: skip
        finally:
            os.close(out)  # the child holds its own descriptor
        started = ServiceProc(name, proc, port, log)
        self.started.append(started)
        return started

    async def stop_all(self) -> None:
        for proc in reversed(self.started):
            await proc.stop()


@asynccontextmanager
async def processes(tmp: Path, config_text: str, nats_url: str) -> AsyncIterator[Processes]:
    procs = Processes(tmp, config_text, nats_url)
    try:
        yield procs
    finally:
        await procs.stop_all()
