"""Files only their owner may read: the data directory and the secrets in it.

A secret written with the default umask is world-readable for as long as it
takes to chmod it, and forever if the chmod is forgotten or the process dies
in between. So a secret file is created 0600 from its first byte (os.open
with the mode, into a temporary name, then renamed over the old one, which
also replaces an older file's looser mode) and its directory is 0700.
"""

from __future__ import annotations

import os
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def private_dir(path: Path) -> Path:
    """Make `path` (and missing parents) a directory only its owner can enter."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    # An existing directory keeps its mode under mkdir: tighten it (it holds no secret
    # of ours yet, so there is nothing a looser mode could have leaked).
    if path.stat().st_mode & 0o777 != PRIVATE_DIR:
        path.chmod(PRIVATE_DIR)
    return path


def write_private(path: Path, text: str) -> None:
    """Write `text` to `path`, readable and writable by its owner only, atomically."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
