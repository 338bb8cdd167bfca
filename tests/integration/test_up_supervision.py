"""`mailbus up` as an operator meets it when things go wrong: a second start on the
same data directory, a listener port already taken, a child that dies, a
nats-server that dies."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

from libs.common.runtime.embedded_nats import EmbeddedNats, free_port
from libs.common.runtime.service import EX_CONFIG
from ops import datadir
from tests.support.sink import Sink
from tests.support.streams import eventually
from tests.support.up import ROOT, mailbus_up, relay_config


async def _run_up(tmp_path: Path, config: Path, within: float = 60) -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ops.cli", "up", "--config", str(config),
        "--data-dir", str(tmp_path / "var"),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), within)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode is not None
    return proc.returncode, out.decode(errors="replace")


def _service_pid(name: str, parent: int) -> int:
    """The pid of `python -m services.<name>` whose parent is `parent`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            continue
        if ppid == parent and f"services.{name}".encode() in cmdline:
            return int(entry.name)
    raise LookupError(name)


def _nats_pid(parent: int) -> int:
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            if ppid == parent and comm == "nats-server":
                return int(entry.name)
    raise LookupError("nats-server")


async def test_a_second_up_on_the_same_data_dir_refuses_in_one_line(tmp_path: Path) -> None:
    smtp, sink = free_port(), free_port()
    async with mailbus_up(tmp_path, relay_config("mx.lock.test", smtp, sink)) as first:
        second_cfg = tmp_path / "second.yaml"
        second_cfg.write_text(relay_config("mx.lock.test", free_port(), sink))
        code, out = await _run_up(tmp_path, second_cfg)
        assert code == 1, out
        lines = out.strip().splitlines()
        assert len(lines) == 1, out
        assert "fatal:" in lines[0] and f"pid {first.proc.pid}" in lines[0], lines
        assert "nats nats://127.0.0.1:" in lines[0], lines
        # The first one is untouched: its operator URL still works for the CLI.
        assert first.proc.returncode is None
        admin = (tmp_path / "var" / datadir.ADMIN_URL_FILE).read_text()
        assert first.ready.split("nats ")[1].split(";")[0].removeprefix("nats://") in admin


async def test_a_taken_listener_port_stops_the_start_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = tmp_path / "mailbus.yaml"
        cfg.write_text(relay_config("mx.bind.test", port, free_port()))
        code, out = await _run_up(tmp_path, cfg, within=30)
    assert code == 1, out
    assert out.strip().splitlines() == [
        f"mailbus | fatal: bind listener smtp 127.0.0.1:{port}: Address already in use"
    ], out
    assert not datadir.is_running(tmp_path / "var")


async def test_a_service_that_cannot_bind_says_so_and_exits_78(
    tmp_path: Path, nats_server: EmbeddedNats
) -> None:
    """Run alone (a container), ingress says the same in one line and exits with
    EX_CONFIG, which `mailbus up` does not restart."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        cfg = tmp_path / "mailbus.yaml"
        cfg.write_text(relay_config("mx.bind.test", port, free_port()))
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "services.ingress", "--config", str(cfg),
            "--nats-url", nats_server.url,
            cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        _, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == EX_CONFIG, err
    fatal = [line for line in err.decode().splitlines() if "fatal:" in line]
    assert fatal == [f"fatal: bind listener smtp 127.0.0.1:{port}: Address already in use"], err
    assert b"Traceback" not in err


async def test_a_dying_service_is_restarted_with_back_off_then_given_up(tmp_path: Path) -> None:
    smtp, sink = free_port(), free_port()
    async with mailbus_up(tmp_path, relay_config("mx.die.test", smtp, sink)) as up:
        for deaths in range(1, 6):
            pid = await _wait_for_pid(lambda: _service_pid("notifier", up.proc.pid))
            os.kill(pid, signal.SIGKILL)
            await eventually(
                _true(lambda p=pid, n=deaths: _gone(p) and _said(up.output, n)),  # type: ignore[misc]
                "the supervisor to notice",
                within=30,
            )
        pauses = [line for line in up.output if "notifier exited with code" in line]
        # Four restarts, each after a longer pause; the fifth death is the last.
        assert [line.split("restarting in ")[1].strip() for line in pauses[:4]] == [
            "1s", "2s", "4s", "8s"
        ], pauses  # fmt: skip
        async with asyncio.timeout(30):
            code = await up.proc.wait()
        assert code == 1
        await asyncio.sleep(0.5)
        text = "".join(up.output)
        assert "fatal: notifier keeps dying (4 restarts, last exit code -9)" in text, text
        assert "mailbus | stopped" in text


async def _wait_for_pid(find: Callable[[], int]) -> int:
    async with asyncio.timeout(30):
        while True:
            try:
                return find()
            except LookupError:
                await asyncio.sleep(0.1)


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def _said(output: list[str], deaths: int) -> bool:
    told = [line for line in output if "notifier exited with code" in line or "keeps dying" in line]
    return len(told) >= deaths


async def test_a_dead_nats_server_is_restarted_on_the_same_store(
    tmp_path: Path, sink_factory: Callable[..., tuple[Sink, int]]
) -> None:
    smtp = free_port()
    sink, sink_port = sink_factory()
    # Without connection counting: its bucket is in memory and is remade after a
    # restart by its own owner (issue 18), not by the supervisor.
    config = relay_config("mx.nats.test", smtp, sink_port).replace(
        "security: {", "security: {max_connections_per_ip: 0, "
    )
    async with mailbus_up(tmp_path, config) as up:
        await _send(smtp, "before@remote.test")
        await eventually(_true(lambda: len(sink.received) == 1), "the first delivery", within=30)
        os.kill(_nats_pid(up.proc.pid), signal.SIGKILL)
        await eventually(
            _true(lambda: any("nats-server restarted at" in line for line in up.output)),
            "the restart",
            within=30,
        )
        text = "".join(up.output)
        assert "nats-server exited with code -9; restarting it in 1s on the same store" in text
        # Same store, same users: the services reconnect and mail flows again.
        await _send(smtp, "after@remote.test", attempts=20)
        await eventually(_true(lambda: len(sink.received) == 2), "the second delivery", within=60)


def _true(check: Callable[[], bool]) -> Callable[[], Awaitable[bool]]:
    async def wrapped() -> bool:
        return check()

    return wrapped


async def _send(port: int, rcpt: str, attempts: int = 1) -> None:
    import smtplib

    def send() -> None:
        with smtplib.SMTP("127.0.0.1", port, timeout=10) as client:
            client.sendmail("sender@nats.test", [rcpt], b"Subject: t\r\n\r\nbody\r\n")

    for attempt in range(attempts):
        try:
            await asyncio.to_thread(send)
            return
        except (smtplib.SMTPException, OSError):
            if attempt == attempts - 1:
                raise
            await asyncio.sleep(1)
