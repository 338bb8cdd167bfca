"""Password checks off the event loop: a few worker processes, a bounded queue with deadlines.

One argon2id verification takes tens of milliseconds of CPU and 64 MiB of
memory by default: on the loop it would stall every other policy answer, and
on an unbounded pool a burst of logins would allocate without limit. So the
checks run in as many niced worker processes as there are cores
(`PasswordWorkers`), and wait for one in a queue that is bounded in length
and in time:

- a check whose deadline (`policy.timeout` after the request came in) has
  passed is dropped before it starts: ingress has already answered 451, so
  its result would go to no one;
- a full queue refuses at once rather than growing;
- the queue is ordered by how often the address failed this hour, then by
  arrival: an address flooding wrong passwords waits behind everyone else,
  so a login from elsewhere is checked next, not after the flood;
- one worker is kept for addresses with no failure this hour: a login from
  elsewhere does not even wait for a flooder's check to end.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import os
import time
from dataclasses import dataclass, field
from enum import Enum

from services.policy.adapters.password_workers import CheckExpired, CheckLost, PasswordWorkers

# Checks that may wait for a worker, per worker: with one check in flight per
# client address, more waiting than this is a flood from many addresses.
WAITING_PER_WORKER = 16


class Verdict(Enum):
    MATCH = "match"
    MISMATCH = "mismatch"
    EXPIRED = "expired"  # its deadline passed before a worker was free
    BUSY = "busy"  # the queue was full
    LOST = "lost"  # its worker died or hung during the check


@dataclass(order=True)
class _Waiter:
    priority: int
    seq: int
    deadline: float = field(compare=False)
    ready: asyncio.Future[None] = field(compare=False)


class PasswordChecker:
    def __init__(self, workers: int | None = None, max_waiting: int | None = None) -> None:
        # As many as cores: measured with one fewer (the loop's), a login from elsewhere
        # waited longer behind the one running check, and MAIL answers gained little;
        # the workers' niceness is what leaves the loop its share.
        self.workers = workers or os.cpu_count() or 1
        # Checks of addresses that failed this hour may take all workers but this many.
        self.kept_for_fresh = 1 if self.workers > 1 else 0
        self.max_waiting = max_waiting or WAITING_PER_WORKER * self.workers
        self._pool = PasswordWorkers(self.workers)
        self._running = 0
        self._waiting: list[_Waiter] = []
        self._seq = itertools.count()
        self.dropped = {Verdict.EXPIRED: 0, Verdict.BUSY: 0, Verdict.LOST: 0}
        self.ran = 0

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Checks holding a worker (or waiting for one being replaced)."""
        return self._running

    @property
    def pool(self) -> PasswordWorkers:
        return self._pool

    async def start(self) -> None:
        """Start the worker processes (OSError if they cannot start)."""
        await self._pool.start()

    async def verify(
        self, encoded: str | None, password: str, deadline: float, priority: int = 0
    ) -> Verdict:
        """Check `password` against `encoded` if a worker is free before `deadline`
        (time.monotonic()); lower `priority` goes first, 0 is an address with no
        failure this hour."""
        verdict = await self._turn(deadline, priority)
        if verdict is None:
            try:
                ok = await self._pool.check(encoded, password, deadline)
            except CheckExpired:
                verdict = Verdict.EXPIRED  # its worker was being replaced
            except CheckLost:
                verdict = Verdict.LOST
            else:
                self.ran += 1
                verdict = Verdict.MATCH if ok else Verdict.MISMATCH
            finally:
                self._running -= 1
                self._wake()
        if verdict in self.dropped:
            self.dropped[verdict] += 1
        return verdict

    def _may_run(self, priority: int) -> bool:
        limit = self.workers if priority <= 0 else self.workers - self.kept_for_fresh
        return self._running < limit

    async def _turn(self, deadline: float, priority: int) -> Verdict | None:
        """Wait for a worker; None once this check holds one."""
        if time.monotonic() >= deadline:
            return Verdict.EXPIRED
        # Nobody waiting could take a free worker (`_wake` runs whenever one frees
        # up), and whoever waits goes no earlier than this priority would.
        if self._may_run(priority):
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
            # Handed a worker just as it gave up: pass the worker on.
            self._running -= 1
            self._wake()
        elif waiter in self._waiting:
            self._waiting.remove(waiter)
            heapq.heapify(self._waiting)
        waiter.ready.cancel()

    def _wake(self) -> None:
        """Hand free workers to the best waiters whose deadlines have not passed."""
        now = time.monotonic()
        while self._waiting:
            waiter = self._waiting[0]
            if waiter.deadline <= now or waiter.ready.done():
                heapq.heappop(self._waiting)
                continue  # its own wait_for ends it as expired; the worker goes on
            if not self._may_run(waiter.priority):
                return  # the best waiter cannot run, so nor can any behind it
            heapq.heappop(self._waiting)
            self._running += 1
            waiter.ready.set_result(None)

    async def close(self) -> None:
        await self._pool.close()
