"""The operator commands' shared plumbing: where NATS is, and giving up when it is not there."""

from __future__ import annotations

import argparse
import os
import socket
from pathlib import Path

import pytest

from ops import ctl, datadir
from tests.support.cli import mailbus


def _args(**given: object) -> argparse.Namespace:
    values: dict[str, object] = {"nats_url": None, "config": None, "data_dir": None}
    return argparse.Namespace(**{**values, **given})


def test_servers_prefer_urls_then_the_running_instance(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / datadir.ADMIN_URL_FILE).write_text("nats://admin:pw@127.0.0.1:4999\n")
    with pytest.raises(ctl.CtlError, match=f"no mailbus up is running on {tmp_path}"):
        ctl.servers(_args(data_dir=str(tmp_path)))  # a left-over URL file is not an instance
    lock = datadir.DataDirLock(tmp_path)
    lock.acquire(nats="nats://127.0.0.1:4999")
    try:
        found = (["nats://admin:pw@127.0.0.1:4999"], None)
        assert ctl.servers(_args(data_dir=str(tmp_path))) == found
        monkeypatch.setenv(datadir.DATA_DIR_ENV, str(tmp_path))
        assert ctl.servers(_args()) == found
        monkeypatch.delenv(datadir.DATA_DIR_ENV)
        monkeypatch.chdir(tmp_path.parent)
        (tmp_path.parent / "var").mkdir(exist_ok=True)
        with pytest.raises(ctl.CtlError, match="no mailbus up is running on var"):
            ctl.servers(_args())
        given = _args(nats_url=["nats://127.0.0.1:1"], data_dir=str(tmp_path))
        assert ctl.servers(given) == (["nats://127.0.0.1:1"], None)
    finally:
        lock.release()


def test_a_second_lock_names_the_holder(tmp_path: Path) -> None:
    first = datadir.DataDirLock(tmp_path)
    first.acquire(nats="nats://127.0.0.1:4999", config="/etc/mailbus.yaml")
    try:
        with pytest.raises(datadir.DataDirInUse) as caught:
            datadir.DataDirLock(tmp_path).acquire()
        text = str(caught.value)
        assert f"pid {os.getpid()}" in text and "nats nats://127.0.0.1:4999" in text, text
    finally:
        first.release()
    assert not datadir.is_running(tmp_path)


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
