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

from services.policy.adapters.password_workers import (
    NICE,
    CheckExpired,
    CheckLost,
    PasswordWorkers,
)

# Checks that may wait for a worker, per worker: with one check in flight per
# client address, more waiting than this is a flood from many addresses.
WAITING_PER_WORKER = 16
# The worker kept for addresses with no failure runs less niced than the others:
# when both check at once, a login from elsewhere gets most of what the loop leaves.
FRESH_NICE = 5


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
    ready: asyncio.Future[PasswordWorkers] = field(compare=False)


class PasswordChecker:
    def __init__(self, workers: int | None = None, max_waiting: int | None = None) -> None:
        # As many as cores: measured with one fewer (the loop's), a login from elsewhere
        # waited longer behind the one running check, and MAIL answers gained little;
        # the workers' niceness is what leaves the loop its share.
        self.workers = workers or os.cpu_count() or 1
        self.max_waiting = max_waiting or WAITING_PER_WORKER * self.workers
        # Checks of addresses with failures this hour (priority > 0) run in `pool`
        # only; the others go to `fresh_pool` first, kept for them, where there are
        # two workers or more.
        kept = 1 if self.workers > 1 else 0
        self.pool = PasswordWorkers(self.workers - kept, nice=NICE)
        self.fresh_pool = PasswordWorkers(kept, nice=FRESH_NICE) if kept else None
        self._busy: dict[PasswordWorkers, int] = {self.pool: 0}
        if self.fresh_pool is not None:
            self._busy[self.fresh_pool] = 0
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
        return sum(self._busy.values())

    async def start(self) -> None:
        """Start the worker processes (OSError if they cannot start)."""
        await asyncio.gather(*(pool.start() for pool in self._busy))

    async def verify(
        self, encoded: str | None, password: str, deadline: float, priority: int = 0
    ) -> Verdict:
        """Check `password` against `encoded` if a worker is free before `deadline`
        (time.monotonic()); lower `priority` goes first, 0 is an address with no
        failure this hour."""
        turn = await self._turn(deadline, priority)
        if isinstance(turn, Verdict):
            verdict = turn
        else:
            try:
                ok = await turn.check(encoded, password, deadline)
            except CheckExpired:
                verdict = Verdict.EXPIRED  # its worker was being replaced
            except CheckLost:
                verdict = Verdict.LOST
            else:
                self.ran += 1
                verdict = Verdict.MATCH if ok else Verdict.MISMATCH
            finally:
                self._busy[turn] -= 1
                self._wake()
        if verdict in self.dropped:
            self.dropped[verdict] += 1
        return verdict

    def _free(self, priority: int) -> PasswordWorkers | None:
        """The pool with a free worker for a check of this priority, if any."""
        if priority <= 0 and self.fresh_pool is not None:
            if self._busy[self.fresh_pool] < self.fresh_pool.size:
                return self.fresh_pool
        return self.pool if self._busy[self.pool] < self.pool.size else None

    def _take(self, priority: int) -> PasswordWorkers | None:
        pool = self._free(priority)
        if pool is not None:
            self._busy[pool] += 1
        return pool

    async def _turn(self, deadline: float, priority: int) -> Verdict | PasswordWorkers:
        """Wait for a worker: the pool it is in once this check holds it."""
        if time.monotonic() >= deadline:
            return Verdict.EXPIRED
        # Nobody waiting could take a free worker (`_wake` runs whenever one frees
        # up), and whoever waits goes no earlier than this priority would.
        pool = self._take(priority)
        if pool is not None:
            return pool
        if len(self._waiting) >= self.max_waiting:
            return Verdict.BUSY
        waiter = _Waiter(
            priority, next(self._seq), deadline, asyncio.get_running_loop().create_future()
        )
        heapq.heappush(self._waiting, waiter)
        try:
            return await asyncio.wait_for(asyncio.shield(waiter.ready), deadline - time.monotonic())
        except BaseException as exc:
            self._give_up(waiter)
            if isinstance(exc, TimeoutError):
                return Verdict.EXPIRED
            raise

    def _give_up(self, waiter: _Waiter) -> None:
        if waiter.ready.done() and not waiter.ready.cancelled():
            # Handed a worker just as it gave up: pass the worker on.
            self._busy[waiter.ready.result()] -= 1
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
            pool = self._take(waiter.priority)
            if pool is None:
                return  # the best waiter cannot run, so nor can any behind it
            heapq.heappop(self._waiting)
            waiter.ready.set_result(pool)

    async def close(self) -> None:
        await asyncio.gather(*(pool.close() for pool in self._busy))
