"""`mailbus up`: embedded NATS and the five services as child processes, one command.

The supervisor owns the order: NATS first, then the services; on Ctrl-C or
SIGTERM the services drain first and NATS stops last, so nothing in flight is
cut off from the bus. Killed by SIGKILL, it stops in the same order: the
services get a parent-death SIGTERM and drain; nats-server is kept by a small
watchdog (ops/nats_watchdog.py) that stops it once they are gone.

One supervisor per data directory (ops/datadir.py's lock). A listener address
that cannot be bound stops the start in one line, before anything runs. A child
that dies is restarted after a growing pause, nats-server included (on the same
store, port and users); one that keeps dying is given up on, and mailbus stops.
Children write to the supervisor's own stdout and stderr: no Python copies lines.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import nats
from nats.aio.client import Client as NATS

from libs.common.config import Config
from libs.common.config.fieldtypes import split_host_port
from libs.common.contract import permissions, subjects
from libs.common.contract.policy import PolicyQuery, Session
from libs.common.runtime.embedded_nats import EmbeddedNats, die_with_parent, hashed_password
from libs.common.runtime.lease import SLOT_ENV
from libs.common.runtime.private import private_dir, write_private
from libs.common.runtime.service import EX_CONFIG
from ops.datadir import ADMIN_URL_FILE, DataDirInUse, DataDirLock, bind_problems
from ops.migrate import migrate_at

READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 8.0
# Pauses before restarting a child that died, one per death in a row; after the
# last, the supervisor gives up. A child that ran STABLE_S starts the row anew.
BACKOFF_S: tuple[float, ...] = (1.0, 2.0, 4.0, 8.0)
STABLE_S = 30.0
NATS_POLL_S = 0.5


def _say(line: str) -> None:
    print(f"mailbus | {line}", flush=True)


# A service's $SRV.PING answers as soon as its micro service exists, before start()
# has registered its endpoints: policy is ready when its last endpoint answers.
_READY_QUERY = PolicyQuery(
    stage="connect", session=Session(session_id="mailbus-up-ready", client_ip="127.0.0.1")
).model_dump_json()


async def _answers(nc: NATS, name: str) -> bool:
    msg = await nc.request(f"$SRV.PING.{subjects.service_name(name)}", b"", timeout=0.5)
    if json.loads(msg.data).get("name") != subjects.service_name(name):
        return False
    if name == "policy":
        # The dry run counts nothing; an error reply (no endpoint yet) raises.
        reply = await nc.request(subjects.POLICY_DRYRUN_SUBJECT, _READY_QUERY.encode(), timeout=0.5)
        return not (reply.headers or {}).get("Nats-Service-Error") and bool(reply.data)
    return True


def _says_ready(address: str) -> bool:
    """The process's own /readyz: policy answers before its password workers run,
    and counts itself ready only after them."""
    try:
        with urllib.request.urlopen(f"http://{address}/readyz", timeout=0.5) as resp:
            return int(resp.status) == 200
    except (urllib.error.URLError, OSError):
        return False


class Backoff:
    """Deaths in a row of one child, and the pause before its next start."""

    def __init__(self, pauses: Sequence[float] = BACKOFF_S, stable_s: float = STABLE_S) -> None:
        self.pauses = tuple(pauses)
        self.stable_s = stable_s
        self.deaths = 0
        self.started = time.monotonic()

    def start(self) -> None:
        self.started = time.monotonic()

    def died(self) -> float | None:
        """The pause before the restart, or None: give up."""
        if time.monotonic() - self.started >= self.stable_s:
            self.deaths = 0
        self.deaths += 1
        if self.deaths > len(self.pauses):
            return None
        return self.pauses[self.deaths - 1]


class Supervisor:
    def __init__(
        self,
        config_path: str,
        config: Config,
        data_dir: Path,
        services: Sequence[str] = subjects.SERVICES,
    ) -> None:
        self.config_path = config_path
        self.config = config
        self.data_dir = data_dir
        self.services = list(services)
        self.nats: EmbeddedNats | None = None
        self.servers: list[str] = list(config.nats.url)
        self.children: dict[str, asyncio.subprocess.Process] = {}
        # Per-service NATS URLs carrying credentials (embedded server only); passed in
        # the environment so passwords never show in `ps`.
        self.service_urls: dict[str, list[str]] = {}
        self.admin_urls: list[str] = self.servers
        self.stopping = False
        self.exit_code = 0
        self._stop = asyncio.Event()
        self._backoff: dict[str, Backoff] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self.lock = DataDirLock(data_dir)
        self.watchdog: asyncio.subprocess.Process | None = None

    async def _spawn(self, name: str) -> asyncio.subprocess.Process:
        args = [sys.executable, "-m", f"services.{name}", "--config", self.config_path]
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        env.setdefault(SLOT_ENV, f"{socket.gethostname()}:{self.data_dir.resolve()}:{name}")
        if name in self.service_urls:
            env["MAILBUS_NATS_URL"] = ",".join(self.service_urls[name])
        else:
            for url in self.servers:
                args += ["--nats-url", url]
        metrics = self.metrics_address(name)
        if metrics:
            args += ["--metrics-address", metrics]
        # stdout and stderr are ours: the child's lines reach the terminal or the
        # journal directly, each already naming its service (runtime/maillog.py).
        proc = await asyncio.create_subprocess_exec(
            *args,
            env=env,
            start_new_session=True,  # Ctrl-C reaches only us; we stop children in order
            preexec_fn=die_with_parent,
        )
        self.children[name] = proc
        self._tell_watchdog(f"service {name} {proc.pid}")
        self._backoff.setdefault(name, Backoff()).start()
        self._tasks.append(asyncio.create_task(self._watch(name, proc)))
        return proc

    async def _start_watchdog(self) -> None:
        """Before nats-server: from its first instant it has someone to stop it last."""
        self.watchdog = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ops.nats_watchdog",
            stdin=asyncio.subprocess.PIPE,
            start_new_session=True,  # Ctrl-C reaches only us
        )  # fmt: skip
        self._tasks.append(asyncio.create_task(self._watch_watchdog(self.watchdog)))

    def _tell_watchdog(self, line: str) -> None:
        watchdog = self.watchdog
        if watchdog is not None and watchdog.stdin is not None and watchdog.returncode is None:
            watchdog.stdin.write(line.encode() + b"\n")

    async def _watch_watchdog(self, watchdog: asyncio.subprocess.Process) -> None:
        """A watchdog that died is started again and told what runs now."""
        code = await watchdog.wait()
        if self.stopping:
            return
        _say(f"nats watchdog exited with code {code}; starting it again")
        await asyncio.sleep(1.0)
        if self.stopping:
            return
        await self._start_watchdog()
        if self.nats is not None and self.nats.proc is not None:
            self._tell_watchdog(f"nats {self.nats.proc.pid}")
        for name, proc in self.children.items():
            if proc.returncode is None:
                self._tell_watchdog(f"service {name} {proc.pid}")

    async def _stop_watchdog(self) -> None:
        watchdog = self.watchdog
        if watchdog is None or watchdog.returncode is not None:
            return
        self._tell_watchdog("done")
        if watchdog.stdin is not None:
            watchdog.stdin.close()
        try:
            await asyncio.wait_for(watchdog.wait(), 5)
        except TimeoutError:
            watchdog.kill()
            await watchdog.wait()

    def metrics_address(self, name: str) -> str | None:
        """One port per process: telemetry.metrics_address's port plus the service's index."""
        base = self.config.telemetry.metrics_address
        if not base:
            return None
        host, port = split_host_port(base)
        shown = f"[{host}]" if ":" in host else host
        return f"{shown}:{port + self.services.index(name)}"

    def give_up(self, line: str) -> None:
        _say(line)
        self.exit_code = 1
        self._stop.set()

    async def _watch(self, name: str, proc: asyncio.subprocess.Process) -> None:
        code = await proc.wait()
        if self.stopping:
            return
        if code == EX_CONFIG:
            self.give_up(f"fatal: {name} cannot start as configured (exit {code}); stopping")
            return
        pause = self._backoff[name].died()
        if pause is None:
            self.give_up(
                f"fatal: {name} keeps dying ({self._backoff[name].deaths - 1} restarts, "
                f"last exit code {code}); giving up and stopping"
            )
            return
        _say(f"{name} exited with code {code}; restarting in {pause:g}s")
        await asyncio.sleep(pause)
        if not self.stopping:
            await self._spawn(name)

    async def _watch_nats(self, nats_: EmbeddedNats) -> None:
        """Restart a nats-server that died, on the same store, port and users."""
        backoff = Backoff()
        while not self.stopping:
            await asyncio.sleep(NATS_POLL_S)
            proc = nats_.proc
            code = proc.poll() if proc is not None else None
            if code is None or self.stopping:
                continue
            while not self.stopping:
                pause = backoff.died()
                if pause is None:
                    self.give_up(
                        f"fatal: nats-server keeps dying (last exit code {code}); see "
                        f"{nats_.log_file}; giving up and stopping"
                    )
                    return
                _say(
                    f"nats-server exited with code {code}; restarting it in {pause:g}s "
                    f"on the same store {nats_.data_dir}"
                )
                await asyncio.sleep(pause)
                if self.stopping:
                    return
                try:
                    # It blocks the loop only until the server accepts clients.
                    nats_.start()
                except (RuntimeError, TimeoutError, OSError) as exc:
                    code = nats_.proc.returncode if nats_.proc is not None else None
                    _say(f"nats-server did not start again: {exc}")
                    continue
                backoff.start()
                _say(f"nats-server restarted at {nats_.url}")
                break

    async def wait_ready(self) -> None:
        nc = await nats.connect(servers=self.admin_urls, name="mailbus-up")
        try:
            pending = set(self.services)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while pending:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no health answer from: {', '.join(sorted(pending))}")
                for name in sorted(pending):
                    metrics = self.metrics_address(name)
                    try:
                        if await _answers(nc, name) and (
                            metrics is None or await asyncio.to_thread(_says_ready, metrics)
                        ):
                            pending.discard(name)
                    except Exception:
                        pass
                if pending:
                    await asyncio.sleep(0.2)
        finally:
            await nc.close()

    def ready_line(self) -> str:
        listeners = ", ".join(
            f"{lst.name} ({lst.protocol}) {lst.address}" for lst in self.config.listeners
        )
        metrics = ", ".join(f"{n} {self.metrics_address(n)}" for n in self.services)
        extra = f"; metrics {metrics}" if self.config.telemetry.metrics_address else ""
        return f"ready: {listeners}; nats {', '.join(self.servers)}{extra}"

    def preflight(self) -> bool:
        """The data-dir lock and the listeners' addresses, before anything starts."""
        try:
            self.lock.acquire(config=self.config_path)
        except DataDirInUse as exc:
            _say(f"fatal: {exc}")
            return False
        if "ingress" in self.services:
            binds = [(lst.name, lst.host, lst.port) for lst in self.config.listeners if lst.port]
            fatal = bind_problems(binds)
            if fatal:
                for line in fatal:
                    _say(line)
                return False
        return True

    async def run(self) -> int:
        if not self.preflight():
            self.lock.release()
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            if not self.servers:
                await self._start_watchdog()
                await self._start_embedded()
            # The one owner of the topology, before any service checks it (ops/migrate.py).
            for line in await migrate_at(self.admin_urls, self.config):
                _say(f"migrated {line}")
            await self._publish_config("start")
            # Like `postfix reload`: the edited file becomes the next revision, applied live.
            loop.add_signal_handler(
                signal.SIGHUP, lambda: self._tasks.append(loop.create_task(self._reload()))
            )
            for name in self.services:
                await self._spawn(name)
            ready = asyncio.create_task(self.wait_ready())
            stopped = asyncio.create_task(self._stop.wait())
            done, _ = await asyncio.wait({ready, stopped}, return_when=asyncio.FIRST_COMPLETED)
            if ready in done:
                ready.result()
                _say(self.ready_line())
                await self._stop.wait()
            else:
                ready.cancel()
            return self.exit_code
        except TimeoutError as exc:
            _say(f"not ready: {exc}")
            return 1
        finally:
            await self.shutdown()
            self.lock.release()

    async def _publish_config(self, action: Literal["start", "reload"]) -> None:
        from ops.configctl import from_supervisor

        try:
            await from_supervisor(self.admin_urls, self.config_path, action)
        except Exception as exc:  # the services still run their files: say so, go on
            _say(f"configuration not published ({action}): {type(exc).__name__}: {exc}")

    async def _reload(self) -> None:
        _say(f"SIGHUP: applying {self.config_path}")
        await self._publish_config("reload")

    async def _start_embedded(self) -> None:
        """Start nats-server with one user per service (libs/common/contract/permissions.py).

        Passwords are made anew at every start; the operator's (admin) URL is
        written to `<data-dir>/nats-admin.url`, readable by its owner only, for
        `mailbus queue` and `mailbus blocks`.
        """
        passwords = {svc: secrets.token_urlsafe(24) for svc in subjects.SERVICES}
        admin = secrets.token_urlsafe(24)
        self.nats = EmbeddedNats(
            data_dir=self.data_dir / "nats",
            log_file=self.data_dir / "nats-server.log",
            # nats-server gets bcrypt hashes; the passwords themselves stay in memory.
            extra_config=permissions.authorization_block(
                {svc: hashed_password(pw) for svc, pw in passwords.items()},
                hashed_password(admin),
            ),
            # No parent-death signal: it must outlive the services' drain (the watchdog).
            spawned=lambda pid: self._tell_watchdog(f"nats {pid}"),
        )
        url = self.nats.start()
        self.servers = [url]
        hostport = url.removeprefix("nats://")
        for svc, password in passwords.items():
            user = subjects.service_name(svc)
            self.service_urls[svc] = [f"nats://{user}:{password}@{hostport}"]
        self.admin_urls = [f"nats://{permissions.ADMIN_USER}:{admin}@{hostport}"]
        admin_file = self.data_dir / ADMIN_URL_FILE
        write_private(admin_file, self.admin_urls[0] + "\n")
        self.lock.update(config=self.config_path, nats=url)
        self._tasks.append(asyncio.create_task(self._watch_nats(self.nats)))
        _say(f"embedded nats-server at {url}, store {self.nats.data_dir}")
        _say(f"operator URL (mailbus queue/blocks --nats-url) in {admin_file}")

    async def shutdown(self) -> None:
        self.stopping = True
        _say("stopping")
        for proc in self.children.values():
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
        waits = [p.wait() for p in self.children.values() if p.returncode is None]
        if waits:
            try:
                await asyncio.wait_for(asyncio.gather(*waits), STOP_TIMEOUT_S)
            except TimeoutError:
                for name, proc in self.children.items():
                    if proc.returncode is None:
                        _say(f"{name} did not stop in time; killing it")
                        proc.kill()
                await asyncio.gather(*(p.wait() for p in self.children.values()))
        for task in self._tasks:
            task.cancel()
        if self.nats is not None:
            await self.nats.astop()
        await self._stop_watchdog()
        _say("stopped")


def up(config_path: str, config: Config, data_dir: str) -> int:
    # Whatever this process and its children create is their owner's alone.
    os.umask(0o077)
    private_dir(Path(data_dir))
    return asyncio.run(Supervisor(config_path, config, Path(data_dir)).run())
