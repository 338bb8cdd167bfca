"""What `mailbus up` writes is its owner's alone, and holds no bus password in clear.

`mailbus up` runs as the operator runs it; while it serves (and after it
stopped) every directory and file under its data directory must carry no
group or other permission bit, the data directory itself be 0700, and
nats-server's config hold bcrypt hashes only: the operator's password from
`nats-admin.url` must appear nowhere in it, and nats-server must not warn
about plain-text passwords.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import nats

from libs.common.runtime.embedded_nats import free_port
from tests.support.sink import Sink
from tests.support.up import mailbus_up, relay_config


def loose_modes(root: Path) -> dict[str, str]:
    """path -> mode of everything under `root` that others could read or enter."""
    found: dict[str, str] = {}
    for path in [root, *root.rglob("*")]:
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            continue
        if mode & 0o077:
            found[str(path.relative_to(root.parent))] = oct(stat.S_IMODE(mode))
    return found


async def test_everything_up_writes_is_private(
    tmp_path: Path, sink_factory: Callable[..., tuple[Sink, int]]
) -> None:
    _, sink_port = sink_factory()
    data = tmp_path / "var"
    # An operator's shell with the usual umask: mailbus up must not depend on it.
    old = os.umask(0o022)
    try:
        async with mailbus_up(tmp_path, relay_config("mx.modes.test", free_port(), sink_port)):
            assert stat.S_IMODE(data.stat().st_mode) == 0o700
            assert loose_modes(data) == {}
            admin_url = (data / "nats-admin.url").read_text().strip()
            password = urlsplit(admin_url).password
            assert password
            conf = (data / "nats" / "nats-server.conf").read_text()
            assert password not in conf
            assert conf.count('password: "$2') == 6  # the operator and five services
            # The hashes work: the operator's URL logs in.
            nc = await nats.connect(admin_url)
            await nc.close()
    finally:
        os.umask(old)
    assert loose_modes(data) == {}
    log = (data / "nats-server.log").read_text()
    assert "Plaintext passwords detected" not in log
