"""The operator commands' shared plumbing: where NATS is, and giving up when it is not there."""

from __future__ import annotations

import argparse
import socket
from pathlib import Path

import pytest

from ops import ctl
from tests.support.cli import mailbus


def _args(**given: object) -> argparse.Namespace:
    values: dict[str, object] = {"nats_url": None, "config": None, "data_dir": None}
    return argparse.Namespace(**{**values, **given})


def test_servers_prefer_urls_then_the_data_dir(tmp_path: Path) -> None:
    (tmp_path / ctl.ADMIN_URL_FILE).write_text("nats://admin:pw@127.0.0.1:4999\n")
    assert ctl.servers(_args()) == ([ctl.DEFAULT_URL], None)
    assert ctl.servers(_args(data_dir=str(tmp_path))) == (["nats://admin:pw@127.0.0.1:4999"], None)
    given = _args(nats_url=["nats://127.0.0.1:1"], data_dir=str(tmp_path))
    assert ctl.servers(given) == (["nats://127.0.0.1:1"], None)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("command", [("queue", "list"), ("blocks", "list")])
async def test_no_nats_is_exit_code_2(command: tuple[str, str]) -> None:
    url = f"nats://127.0.0.1:{_closed_port()}"
    rc, _, err = await mailbus(*command, "--nats-url", url, "--timeout", "2")
    assert rc == 2
    assert f"mailbus {' '.join(command)}: cannot reach NATS" in err
