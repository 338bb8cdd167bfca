"""`mailbus sendmail` as cron and applications call it, into a running `mailbus up`
(found by its data directory), out to a real SMTP sink."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path

from libs.common.runtime.embedded_nats import free_port
from ops.sendmail import prepare, read_message
from tests.support.sink import Sink
from tests.support.streams import eventually
from tests.support.up import ROOT, mailbus_up, relay_config


async def _sendmail(data_dir: Path, *args: str, stdin: bytes) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "sendmail", *args,
        cwd=ROOT, env=dict(os.environ, MAILBUS_DATA_DIR=str(data_dir)),
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    _, err = await asyncio.wait_for(proc.communicate(stdin), 60)
    assert proc.returncode is not None
    return proc.returncode, err.decode()


async def test_sendmail_t_i_f_into_the_running_instance(
    tmp_path: Path, sink_factory: Callable[..., tuple[Sink, int]]
) -> None:
    sink, sink_port = sink_factory()
    smtp = free_port()
    async with mailbus_up(tmp_path, relay_config("mx.cron.test", smtp, sink_port)):
        message = (
            b"To: Ann <ann@remote.test>\n"
            b"Bcc: hidden@remote.test\n"
            b"Subject: nightly\n"
            b"\n"
            b"backup done\n"
            b".\n"
            b"a line after a dot\n"
        )
        code, err = await _sendmail(
            tmp_path / "var", "-t", "-oi", "-f", "cron@cron.test", "-F", "Cron Daemon",
            "extra@remote.test", stdin=message,
        )  # fmt: skip
        assert code == 0, err

        async def arrived() -> bool:
            return len(sink.received) == 1

        await eventually(arrived, "the message at the sink", within=30)
        sender, recipients, data = sink.received[0]
        assert sender == "cron@cron.test"
        assert sorted(recipients) == ["ann@remote.test", "extra@remote.test", "hidden@remote.test"]
        assert b"Bcc:" not in data and b"hidden@" not in data
        assert (
            b'From: "Cron Daemon" <cron@cron.test>' in data
            or b"From: Cron Daemon <cron@cron.test>" in data
        )
        assert b"Date: " in data and b"Message-ID: <" in data
        assert b"a line after a dot" in data  # -oi: the dot ended nothing

        code, err = await _sendmail(tmp_path / "var", stdin=b"Subject: x\n\nno one\n")
        assert code == 64 and "no recipients" in err, err
        # Through a `sendmail` symlink to the `mailbus` script, the arguments are sendmail's.
        link = tmp_path / "sendmail"
        link.symlink_to(Path(sys.executable).parent / "mailbus")
        proc = await asyncio.create_subprocess_exec(
            str(link), "-oi", "-f", "cron@cron.test", "linked@remote.test",
            env=dict(os.environ, MAILBUS_DATA_DIR=str(tmp_path / "var")),
            stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, linked_err = await asyncio.wait_for(proc.communicate(b"Subject: l\n\nlinked\n"), 60)
        assert proc.returncode == 0, linked_err

        async def linked() -> bool:
            return any(r == ["linked@remote.test"] for _, r, _ in sink.received)

        await eventually(linked, "the message sent through the symlink", within=30)
    code, err = await _sendmail(tmp_path / "var", "x@remote.test", stdin=b"\n")
    assert code == 69 and "no mailbus up is running" in err, err


def test_without_i_a_lone_dot_ends_the_message() -> None:
    assert read_message(b"a\n.\nb\n", dot_ends=True) == b"a\n"
    assert read_message(b"a\n.\nb\n", dot_ends=False) == b"a\n.\nb\n"
    prepared = prepare(b"Subject: s\n\nbody\n", ["b@x.test"], False, "a@x.test", None, "h.test")
    assert prepared.message.startswith(b"Subject: s\r\nFrom: a@x.test\r\nDate: ")
    assert prepared.message.endswith(b"\r\n\r\nbody\r\n")
