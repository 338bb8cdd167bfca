"""Stops `mailbus up`'s nats-server last, even when the supervisor was SIGKILLed.

The services die with the supervisor (a parent-death SIGTERM) and drain on the
way out; a nats-server that got the same signal at the same moment would be
gone before they finished, and they would drain against a dead bus. So
nats-server has no parent-death signal: this small process keeps it instead.

The supervisor starts it first and tells it, one line at a time on its stdin,
the processes it runs: `nats PID` and `service NAME PID` (the latest pid of each
name). `done` means the supervisor stopped everything itself. End of input
without `done` means the supervisor is gone: wait (bounded) for the services to
end, kill what is left of them, then SIGTERM nats-server and wait for it.

Standard library only: it starts in a few tens of milliseconds.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

SERVICES_WAIT_S = 8.0
NATS_WAIT_S = 10.0
POLL_S = 0.05


def _start_time(pid: int) -> str | None:
    """The kernel's start time of `pid` (None: no such process, or a zombie): with the
    pid it names one process, even if the pid is reused later."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return None
    return fields[19]


@dataclass
class Kept:
    """One process the watchdog knows about: its pid and start time."""

    pid: int
    started: str | None = field(default=None)

    def __post_init__(self) -> None:
        self.started = _start_time(self.pid)

    def alive(self) -> bool:
        return self.started is not None and _start_time(self.pid) == self.started

    def signal(self, sig: signal.Signals) -> None:
        if self.alive():
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass


@dataclass
class State:
    nats: Kept | None = None
    services: dict[str, Kept] = field(default_factory=dict)
    done: bool = False

    def read(self, line: str) -> None:
        words = line.split()
        if words == ["done"]:
            self.done = True
        elif len(words) == 2 and words[0] == "nats" and words[1].isdigit():
            self.nats = Kept(int(words[1]))
        elif len(words) == 3 and words[0] == "service" and words[2].isdigit():
            self.services[words[1]] = Kept(int(words[2]))


def _wait(procs: list[Kept], within: float) -> list[Kept]:
    """Those of `procs` still alive after at most `within` seconds."""
    deadline = time.monotonic() + within
    left = [p for p in procs if p.alive()]
    while left and time.monotonic() < deadline:
        time.sleep(POLL_S)
        left = [p for p in left if p.alive()]
    return left


def _say(line: str) -> None:
    try:
        print(f"mailbus | watchdog: {line}", file=sys.stderr, flush=True)
    except OSError:
        pass  # nobody reads the supervisor's output any more: stop all the same


def stop_in_order(state: State, services_wait: float = SERVICES_WAIT_S) -> None:
    services = list(state.services.values())
    # They got their parent-death SIGTERM already; this one is for a service the
    # kernel did not signal (started in the instant the supervisor died).
    for proc in services:
        proc.signal(signal.SIGTERM)
    for proc in _wait(services, services_wait):
        _say(f"service pid {proc.pid} did not stop in {services_wait:g}s; killing it")
        proc.signal(signal.SIGKILL)
    _wait(services, 2.0)
    nats = state.nats
    if nats is None or not nats.alive():
        return
    _say(f"services stopped; stopping nats-server (pid {nats.pid})")
    nats.signal(signal.SIGTERM)
    if _wait([nats], NATS_WAIT_S):
        _say("nats-server did not stop in time; killing it")
        nats.signal(signal.SIGKILL)


def main() -> int:
    state = State()
    for line in sys.stdin:
        state.read(line)
        if state.done:
            return 0
    _say("the supervisor is gone; stopping the services, then nats-server")
    stop_in_order(state)
    return 0


if __name__ == "__main__":
    sys.exit(main())
