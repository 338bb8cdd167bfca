"""A real SpamAssassin spamd on loopback, from Debian's `spamd` package.

Started with a private home, user configs off and local tests only (`-L`: no
DNS or network rules), so its scores depend on the message alone. A missing
spamd fails the test that needs it, it never skips: `make test` installs it.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.support.sink import free_port

START_WAIT_S = 60.0  # spamd compiles its rules at start: a few seconds on a busy machine

GTUBE = b"XJS*C4JDBQADN1.NSBN3*2IDNEN*GTUBE-STANDARD-ANTI-UBE-TEST-EMAIL*C.34X"


@dataclass
class Spamd:
    home: Path
    host: str = "127.0.0.1"
    port: int = 0
    proc: subprocess.Popen[bytes] | None = field(default=None, init=False)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> None:
        binary = shutil.which("spamd") or shutil.which("spamd", path="/usr/sbin:/usr/bin")
        if binary is None:
            raise AssertionError(
                "spamd is not installed: `apt-get install spamd spamassassin` (make test does)"
            )
        self.home.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(self.host)
        log = open(self.home / "spamd.log", "wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--listen={self.host}:{self.port}",
                "--local",
                "--nouser-config",
                f"--helper-home-dir={self.home}",
                "--syslog=stderr",
                "--max-children=2",
                "--min-children=1",
                "--min-spare=1",
            ],
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + START_WAIT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"spamd exited with {self.proc.returncode}: {self._log()}")
            if self._answers():
                return
            time.sleep(0.2)
        self.stop()
        raise AssertionError(f"spamd not answering after {START_WAIT_S}s: {self._log()}")

    def _answers(self) -> bool:
        try:
            with socket.create_connection((self.host, self.port), timeout=2) as conn:
                conn.sendall(b"PING SPAMC/1.5\r\n\r\n")
                return conn.recv(64).startswith(b"SPAMD/")
        except OSError:
            return False

    def _log(self) -> str:
        return (self.home / "spamd.log").read_text(errors="replace")[-2000:]

    def stop(self) -> None:
        """TERM to the one we started (its children follow it), then wait for it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)
