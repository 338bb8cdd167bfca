"""Password checks in long-lived worker processes at a lower CPU priority.

An argon2id check keeps a core (or, with its four lanes, both of a small
machine's) busy for a tenth of a second or more. Run on threads of the policy
process, a flood of them took the CPU from the event loop that answers every
other stage: MAIL decisions went from milliseconds to hundreds of them. In a
process of its own, niced at start, a check gives way to the loop whenever
the loop has work; it still gets every cycle the loop leaves idle.

Each worker reads one request a line on stdin (JSON: the stored hash or null,
and the password; never on its command line, where `ps` would show it) and
answers `1` or `0`. The pool starts them once, replaces one that dies (its
check in flight, if any, is reported lost), and ends them with the service: a
worker also ends when its stdin closes, so none outlives a killed policy.

    python -m services.policy.adapters.password_workers NICE
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from libs.common.mail.userhash import verify_password

log = logging.getLogger(__name__)

# Niceness added in each worker: low enough a share that the event loop (nice 0)
# wins the CPU whenever it wants it, on a machine where both compete.
NICE = 10
# A check that has not answered by then is a hung worker: it is killed and replaced.
HUNG_AFTER_S = 30.0
# How long a stopping worker gets to finish its check before it is killed.
STOP_GRACE_S = 2.0
# A worker says so once it can check (imports done, dummy hash made).
READY = b"ready\n"
READY_WITHIN_S = 60.0
RESPAWN_PAUSE_S = 1.0
# So that `python -m` finds this package from any working directory.
_ROOT = str(Path(__file__).resolve().parents[3])


class CheckLost(Exception):
    """The worker died or hung before it answered: the check has no result."""


class CheckExpired(Exception):
    """No worker was free before the check's deadline: it never ran."""


@dataclass(eq=False)
class _Worker:
    proc: asyncio.subprocess.Process

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None


class PasswordWorkers:
    """`size` worker processes; at most one check each at a time."""

    def __init__(self, size: int, nice: int = NICE) -> None:
        self.size = size
        self.nice = nice
        self.restarts = 0
        self.answered = 0  # checks a worker answered: each one it was sent, unless it died
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._workers: set[_Worker] = set()
        self._watchers: set[asyncio.Task[None]] = set()
        self._closing = False

    @property
    def pids(self) -> list[int]:
        return sorted(w.proc.pid for w in self._workers if w.alive)

    async def start(self) -> None:
        """Start the missing workers; OSError if one cannot start."""
        await asyncio.gather(*(self._spawn() for _ in range(self.size - len(self._workers))))

    async def check(self, encoded: str | None, password: str, deadline: float) -> bool:
        """Whether `password` matches `encoded`, checked by the next free worker.

        Raises CheckExpired if none is free before `deadline` (time.monotonic()),
        CheckLost if the worker dies or hangs on it."""
        worker = await self._take(deadline)
        request = json.dumps([encoded, password]).encode() + b"\n"
        exchange = asyncio.ensure_future(self._exchange(worker, request))
        # A caller that gives up (cancelled) leaves the exchange to finish, so that
        # the worker comes back idle instead of staying taken forever.
        exchange.add_done_callback(_consume)
        return await asyncio.shield(exchange)

    async def _exchange(self, worker: _Worker, request: bytes) -> bool:
        stdin, stdout = worker.proc.stdin, worker.proc.stdout
        assert stdin is not None and stdout is not None
        try:
            stdin.write(request)
            await stdin.drain()
            answer = await asyncio.wait_for(stdout.readline(), HUNG_AFTER_S)
        except TimeoutError:
            log.warning("password worker %d hung on a check: killed", worker.proc.pid)
            answer = b""
        except (ConnectionError, OSError):
            answer = b""
        if answer not in (b"1\n", b"0\n"):
            # Dead (EOF), hung or gone: its watcher starts another once it has ended.
            _kill(worker)
            raise CheckLost(f"password worker {worker.proc.pid} gave no answer")
        self.answered += 1
        self._idle.put_nowait(worker)
        return answer == b"1\n"

    async def _take(self, deadline: float) -> _Worker:
        while True:
            try:
                worker = await asyncio.wait_for(
                    self._idle.get(), max(0.0, deadline - time.monotonic())
                )
            except TimeoutError:
                raise CheckExpired("no worker free before the deadline") from None
            if time.monotonic() >= deadline:
                self._idle.put_nowait(worker)
                raise CheckExpired("deadline passed while waiting for a worker")
            if worker.alive:
                return worker
            # Died while idle: its watcher is replacing it.

    async def _spawn(self) -> None:
        """Start a worker and wait until it is ready; OSError if it cannot start."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_ROOT, env.get("PYTHONPATH")) if p)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            __name__,
            str(self.nice),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            env=env,
        )
        worker = _Worker(proc)
        assert proc.stdout is not None
        try:
            ready = await asyncio.wait_for(proc.stdout.readline(), READY_WITHIN_S)
        except TimeoutError:
            ready = b""
        if ready != READY:
            _kill(worker)
            await proc.wait()
            raise OSError(f"password worker {proc.pid} did not start (exit {proc.returncode})")
        self._workers.add(worker)
        watcher = asyncio.create_task(self._watch(worker), name=f"password-worker-{proc.pid}")
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)
        self._idle.put_nowait(worker)

    async def _watch(self, worker: _Worker) -> None:
        code = await worker.proc.wait()
        self._workers.discard(worker)
        if self._closing:
            return
        self.restarts += 1
        log.warning("password worker %d ended (%s): starting another", worker.proc.pid, code)
        while not self._closing:
            try:
                await self._spawn()
                return
            except OSError as exc:
                # The other workers go on meanwhile; tried again, not given up.
                log.error("password worker not restarted: %s", exc)
                await asyncio.sleep(RESPAWN_PAUSE_S)

    async def close(self) -> None:
        self._closing = True
        workers = list(self._workers)
        for worker in workers:
            if worker.proc.stdin is not None:
                worker.proc.stdin.close()
        for worker in workers:
            try:
                await asyncio.wait_for(worker.proc.wait(), STOP_GRACE_S)
            except TimeoutError:
                _kill(worker)
                await worker.proc.wait()
        for watcher in list(self._watchers):
            with contextlib.suppress(asyncio.CancelledError):
                await watcher


def _consume(task: asyncio.Future[bool]) -> None:
    # Retrieved here so that an exchange whose caller left logs no "never retrieved".
    if not task.cancelled():
        task.exception()


def _kill(worker: _Worker) -> None:
    if worker.alive:
        with contextlib.suppress(ProcessLookupError):
            worker.proc.kill()


def serve(nice: int) -> None:
    """The worker's loop: one check per line of stdin until it closes."""
    os.nice(nice)  # before argon2 starts its lane threads: they inherit it
    # Ctrl-C reaches the whole process group; the pool ends its workers itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The first check of an unknown account would also make the dummy hash: made
    # now, so that no check costs more than another.
    verify_password(None, "")
    sys.stdout.buffer.write(READY)
    sys.stdout.buffer.flush()
    try:
        for line in sys.stdin.buffer:
            encoded, password = json.loads(line)
            ok = verify_password(encoded, password)
            sys.stdout.buffer.write(b"1\n" if ok else b"0\n")
            sys.stdout.buffer.flush()
    except BrokenPipeError:
        # Policy ended during a check: nobody to answer. Stdout onto /dev/null so
        # that the flush at exit does not report the broken pipe once more.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


if __name__ == "__main__":
    serve(int(sys.argv[1]))
