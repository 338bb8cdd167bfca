"""One `mailbus up` per data directory, and where the CLI finds the running one.

The lock is an flock on `<data-dir>/mailbus-up.lock`, held for the supervisor's
life; the kernel drops it when the process ends, however it ends, so a crash
leaves no stale lock to clean up. The file also says who holds it (pid, NATS
URL, config), for the one line a second start prints.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
from collections.abc import Iterable
from pathlib import Path

from libs.common.contract.errors import MailbusError

LOCK_FILE = "mailbus-up.lock"
ADMIN_URL_FILE = "nats-admin.url"
DATA_DIR_ENV = "MAILBUS_DATA_DIR"
DEFAULT_DATA_DIR = "./var"


class DataDirInUse(MailbusError):
    """Another `mailbus up` holds the data directory's lock."""


class NoInstance(MailbusError):
    """No `mailbus up` runs on the data directory the CLI looked at."""


def data_dir(given: str | None) -> Path:
    """--data-dir, then $MAILBUS_DATA_DIR, then ./var: where the CLI looks."""
    return Path(given or os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR)


class DataDirLock:
    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self, **about: object) -> None:
        """Raises DataDirInUse naming the holder when another process has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise DataDirInUse(
                f"{self.path.parent} is in use by {holder_text(self.path)}; "
                "stop it first or give another --data-dir"
            ) from None
        self._fd = fd
        self.update(**about)

    def update(self, **about: object) -> None:
        """Rewrites who holds the lock (the NATS URL is known only after NATS starts)."""
        if self._fd is None:
            return
        record = {"pid": os.getpid(), **about}
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, (json.dumps(record, sort_keys=True) + "\n").encode(), 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def holder(path: Path) -> dict[str, object]:
    try:
        record = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def holder_text(path: Path) -> str:
    record = holder(path)
    parts = [f"mailbus up (pid {record.get('pid', '?')}"]
    if record.get("nats"):
        parts.append(f"nats {record['nats']}")
    if record.get("config"):
        parts.append(f"config {record['config']}")
    return ", ".join(parts) + ")"


def is_running(directory: Path) -> bool:
    """True while some process holds the directory's lock."""
    path = directory / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)
    return False


def admin_url(directory: Path) -> str:
    """The operator's NATS URL of the `mailbus up` running on `directory`."""
    if not is_running(directory):
        raise NoInstance(
            f"no mailbus up is running on {directory} "
            f"(give --data-dir, set {DATA_DIR_ENV}, or --nats-url)"
        )
    try:
        return (directory / ADMIN_URL_FILE).read_text().strip()
    except OSError as exc:
        raise NoInstance(f"mailbus up on {directory} has no {ADMIN_URL_FILE} yet: {exc}") from exc


def bind_problems(binds: Iterable[tuple[str, str, int]]) -> list[str]:
    """One `fatal: bind` line per listener whose address cannot be bound now.

    Tried with SO_REUSEADDR, as the listeners bind, so a port in TIME_WAIT after
    a restart is not taken for busy.
    """
    found: list[str] = []
    for name, host, port in binds:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        shown = f"[{host}]:{port}" if family == socket.AF_INET6 else f"{host}:{port}"
        with socket.socket(family, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                sock.listen(1)
            except OSError as exc:
                reason = exc.strerror or str(exc)
                found.append(f"fatal: bind listener {name} {shown}: {reason}")
    return found
