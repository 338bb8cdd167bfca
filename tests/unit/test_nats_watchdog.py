"""ops/nats_watchdog.py with real processes standing in for the services and nats-server:
told `done`, it touches nothing; at end of input it stops the services, then nats-server."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from ops import nats_watchdog

ROOT = Path(__file__).resolve().parents[2]

# Takes its time to stop, as a draining service does, and notes when it got SIGTERM.
_SLOW_STOPPER = """
import signal, sys, time
def stop(*_):
    with open(sys.argv[1], "a") as f:
        f.write(f"{time.monotonic()}\\n")
    time.sleep(float(sys.argv[2]))
    sys.exit(0)
signal.signal(signal.SIGTERM, stop)
print("ready", flush=True)
while True:
    time.sleep(1)
"""


def _start(note: Path, stop_takes: float) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_STOPPER, str(note), str(stop_takes)],
        stdout=subprocess.PIPE,
    )
    assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
    return proc


def _watchdog() -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ops.nats_watchdog"], stdin=subprocess.PIPE, cwd=ROOT
    )


def test_at_end_of_input_the_services_end_before_nats_is_signalled(tmp_path: Path) -> None:
    service = _start(tmp_path / "service", 0.7)
    nats = _start(tmp_path / "nats", 0.0)
    watchdog = _watchdog()
    try:
        assert watchdog.stdin is not None
        watchdog.stdin.write(f"nats {nats.pid}\nservice queue {service.pid}\n".encode())
        watchdog.stdin.close()  # the supervisor is gone
        assert watchdog.wait(15) == 0
        assert service.wait(5) == 0 and nats.wait(5) == 0
        service_told = float((tmp_path / "service").read_text())
        nats_told = float((tmp_path / "nats").read_text())
        # nats-server heard of it only once the service had drained (0.7 s).
        assert nats_told - service_told >= 0.6
    finally:
        for proc in (service, nats, watchdog):
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_done_leaves_everything_alone(tmp_path: Path) -> None:
    nats = _start(tmp_path / "nats", 0.0)
    watchdog = _watchdog()
    try:
        assert watchdog.stdin is not None
        watchdog.stdin.write(f"nats {nats.pid}\ndone\n".encode())
        watchdog.stdin.close()
        assert watchdog.wait(15) == 0
        time.sleep(0.2)
        assert nats.poll() is None and not (tmp_path / "nats").exists()
    finally:
        nats.kill()
        nats.wait()
        if watchdog.poll() is None:
            watchdog.kill()
            watchdog.wait()


def test_a_pid_is_one_process_not_whoever_has_the_number_later() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        kept = nats_watchdog.Kept(proc.pid)
        assert kept.alive()
        kept.started = "1"  # as if the pid now named another, later process
        assert not kept.alive()
        kept.signal(signal.SIGTERM)  # so this must not reach it
        time.sleep(0.2)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.wait()
    assert not nats_watchdog.Kept(proc.pid).alive()
    state = nats_watchdog.State()
    for line in ("nats 12", "service queue 34", "service queue 35", "junk", "nats x"):
        state.read(line)
    assert state.nats is not None and state.nats.pid == 12
    assert {name: k.pid for name, k in state.services.items()} == {"queue": 35}
    assert not state.done
