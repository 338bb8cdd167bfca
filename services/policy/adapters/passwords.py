"""Password checks off the event loop: a few threads, a bounded queue with deadlines.

One argon2id verification takes tens of milliseconds of CPU and 64 MiB of
memory by default: on the loop it would stall every other policy answer, and
on an unbounded pool a burst of logins would allocate without limit. So the
checks run on as many threads as there are cores, and wait for one in a queue
that is bounded in length and in time:

- a check whose deadline (`policy.timeout` after the request came in) has
  passed is dropped before it starts: ingress has already answered 451, so
  its result would go to no one;
- a full queue refuses at once rather than growing;
- the queue is ordered by how often the address failed this hour, then by
  arrival: an address flooding wrong passwords waits behind everyone else,
  so a login from elsewhere is checked next, not after the flood.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from enum import Enum

from libs.common.mail.userhash import verify_password

# Checks that may wait for a thread, per thread: with one check in flight per
# client address, more waiting than this is a flood from many addresses.
WAITING_PER_THREAD = 16


class Verdict(Enum):
    MATCH = "match"
    MISMATCH = "mismatch"
    EXPIRED = "expired"  # its deadline passed before a thread was free
    BUSY = "busy"  # the queue was full


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    deadline: float = field(compare=False)
    ready: asyncio.Future[None] = field(compare=False)


class PasswordChecker:
    def __init__(self, threads: int | None = None, max_waiting: int | None = None) -> None:
        # As many as cores: measured with one fewer (the loop's), a login from elsewhere
        # waited longer behind the one running check, and MAIL answers gained little.
        self.threads = threads or os.cpu_count() or 1
        self.max_waiting = max_waiting or WAITING_PER_THREAD * self.threads
        self._pool = ThreadPoolExecutor(max_workers=self.threads, thread_name_prefix="argon2")
        self._running = 0
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count()
        self.dropped = {Verdict.EXPIRED: 0, Verdict.BUSY: 0}
        self.ran = 0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    async def verify(
        self, encoded: str | None, password: str, deadline: float, priority: int = 0
    ) -> Verdict:
        """Check `password` against `encoded` if a thread is free before `deadline`
        (time.monotonic()); lower `priority` goes first."""
        verdict = await self._turn(deadline, priority)
        if verdict is not None:
            self.dropped[verdict] += 1
            return verdict
        self.ran += 1
        try:
            loop = asyncio.get_running_loop()
            ok = await loop.run_in_executor(self._pool, verify_password, encoded, password)
        finally:
            self._running -= 1
            self._wake()
        return Verdict.MATCH if ok else Verdict.MISMATCH

    async def _turn(self, deadline: float, priority: int) -> Verdict | None:
        """Wait for a thread; None once this check holds one."""
        if time.monotonic() >= deadline:
            return Verdict.EXPIRED
        if self._running < self.threads and not self._waiting:
            self._running += 1
            return None
        if len(self._waiting) >= self.max_waiting:
            return Verdict.BUSY
        waiter = _Waiter(
            priority, next(self._seq), deadline, asyncio.get_running_loop().create_future()
        )
        heapq.heappush(self._waiting, waiter)
        try:
            await asyncio.wait_for(asyncio.shield(waiter.ready), deadline - time.monotonic())
        except BaseException as exc:
            self._give_up(waiter)
            if isinstance(exc, TimeoutError):
                return Verdict.EXPIRED
            raise
        return None

    def _give_up(self, waiter: _Waiter) -> None:
        if waiter.ready.done():
            # Handed a thread just as it gave up: pass the thread on.
            self._running -= 1
            self._wake()
        elif waiter in self._waiting:
            self._waiting.remove(waiter)
            heapq.heapify(self._waiting)
        waiter.ready.cancel()

    def _wake(self) -> None:
        """Hand free threads to the best waiters whose deadlines have not passed."""
        now = time.monotonic()
        while self._waiting and self._running < self.threads:
            waiter = heapq.heappop(self._waiting)
            if waiter.deadline <= now or waiter.ready.done():
                continue  # its own wait_for ends it as expired; the thread goes on
            self._running += 1
            waiter.ready.set_result(None)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
