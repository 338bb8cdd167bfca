"""Failed logins reserved before the check: the count's fold, and the check queue's order.

The fold is pure. The queue is `PasswordChecker` with real argon2 checks in its
real worker processes: a check whose deadline has passed never runs, a full
queue says so at once, an address with fewer failures this hour goes first,
and one with none finds a worker kept for it.
"""

from __future__ import annotations

import asyncio
import os
import time
from datetime import UTC, datetime, timedelta

import pytest
from argon2 import PasswordHasher, Type

from services.policy.adapters.logins import AddressGate
from services.policy.adapters.password_workers import NICE
from services.policy.adapters.passwords import FRESH_NICE, PasswordChecker, Verdict
from services.policy.core.failures import FailedLogins, first_failure, locked, released, reserved

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SLOW = PasswordHasher(time_cost=3, memory_cost=32768, parallelism=1, type=Type.ID)
SLOW_HASH = SLOW.hash("right")


def count(n: int, first: datetime = NOW - timedelta(minutes=10)) -> FailedLogins:
    return FailedLogins(count=n, first_at=first, last_at=first)


@pytest.mark.parametrize(
    ("previous", "limit", "expected"),
    [
        (None, 3, 1),
        (count(2), 3, 3),  # the last one of the hour
        (count(3), 3, None),  # locked: nothing reserved, no check
        (count(3), 0, 4),  # no limit: still counted
        (count(3, NOW - timedelta(hours=1)), 3, 1),  # the window ended: a new one opens
    ],
)
def test_reserved(previous: FailedLogins | None, limit: int, expected: int | None) -> None:
    after = reserved(previous, limit, NOW)
    assert (after.count if after else None) == expected
    if after is not None and previous is not None and previous.live(NOW):
        assert after.first_at == previous.first_at  # a fixed window from the first failure


def test_locked_for_the_rest_of_the_window_only() -> None:
    first = NOW - timedelta(minutes=59)
    assert locked(count(3, first), 3, NOW)
    assert not locked(count(3, first), 3, NOW + timedelta(minutes=1))
    assert not locked(count(3, first), 0, NOW)
    assert not locked(None, 3, NOW)


def test_released_gives_one_back() -> None:
    after = released(count(3), NOW)
    assert after is not None and after.count == 2
    assert released(first_failure(NOW), NOW) == FailedLogins(count=0, first_at=NOW, last_at=NOW)
    assert released(count(0), NOW) is None
    assert released(count(3, NOW - timedelta(hours=2)), NOW) is None  # long forgotten


async def test_a_check_past_its_deadline_never_runs() -> None:
    checker = PasswordChecker(workers=1)
    await checker.start()
    try:
        assert await checker.verify(SLOW_HASH, "right", time.monotonic() - 0.001) is Verdict.EXPIRED
        busy = asyncio.create_task(checker.verify(SLOW_HASH, "wrong", time.monotonic() + 30))
        await asyncio.sleep(0)
        # Waits for the one worker, and its deadline passes first.
        late = await checker.verify(SLOW_HASH, "right", time.monotonic() + 0.005)
        assert late is Verdict.EXPIRED
        assert await busy is Verdict.MISMATCH
        assert (checker.ran, checker.dropped[Verdict.EXPIRED], checker.waiting) == (1, 2, 0)
        assert checker.pool.answered == 1  # the late ones never reached the worker
        # The worker is free again.
        assert await checker.verify(SLOW_HASH, "right", time.monotonic() + 30) is Verdict.MATCH
    finally:
        await checker.close()


async def test_a_full_queue_refuses_at_once() -> None:
    checker = PasswordChecker(workers=1, max_waiting=2)
    await checker.start()
    deadline = time.monotonic() + 30
    try:
        running = [
            asyncio.create_task(checker.verify(SLOW_HASH, "wrong", deadline)) for _ in range(3)
        ]
        await asyncio.sleep(0)
        assert checker.waiting == 2
        assert await checker.verify(SLOW_HASH, "right", deadline) is Verdict.BUSY
        assert await asyncio.gather(*running) == [Verdict.MISMATCH] * 3
        assert checker.dropped[Verdict.BUSY] == 1
    finally:
        await checker.close()


async def test_fewer_failures_go_first() -> None:
    checker = PasswordChecker(workers=1)
    await checker.start()
    deadline = time.monotonic() + 60
    finished: list[str] = []

    async def check(name: str, priority: int) -> None:
        await checker.verify(SLOW_HASH, "wrong", deadline, priority)
        finished.append(name)

    try:
        first = asyncio.create_task(check("first", 0))
        await asyncio.sleep(0)
        tasks = [asyncio.create_task(check(f"flooder{n}", 5)) for n in range(3)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(check("newcomer", 0)))
        await asyncio.gather(first, *tasks)
    finally:
        await checker.close()
    assert finished == ["first", "newcomer", "flooder0", "flooder1", "flooder2"]


async def test_a_worker_is_kept_for_addresses_with_no_failure() -> None:
    checker = PasswordChecker(workers=2)
    await checker.start()
    deadline = time.monotonic() + 60
    base = os.getpriority(os.PRIO_PROCESS, 0)
    try:
        assert checker.fresh_pool is not None
        # The kept worker is less niced than the one every address may use.
        ((kept,), (shared,)) = (checker.fresh_pool.pids, checker.pool.pids)
        assert os.getpriority(os.PRIO_PROCESS, kept) == min(19, base + FRESH_NICE)
        assert os.getpriority(os.PRIO_PROCESS, shared) == min(19, base + NICE)
        flood = [
            asyncio.create_task(checker.verify(SLOW_HASH, "wrong", deadline, priority=3))
            for _ in range(2)
        ]
        await asyncio.sleep(0)
        # One flooder runs; the other waits although a worker is idle.
        assert (checker.running, checker.waiting) == (1, 1)
        fresh = asyncio.create_task(checker.verify(SLOW_HASH, "right", deadline, priority=0))
        await asyncio.sleep(0)
        # The fresh address took the kept worker at once, ahead of the waiting flooder.
        assert (checker.running, checker.waiting) == (2, 1)
        assert await fresh is Verdict.MATCH
        assert await asyncio.gather(*flood) == [Verdict.MISMATCH] * 2
        # Both flooders ran in the shared worker, the fresh login in the kept one.
        assert (checker.pool.answered, checker.fresh_pool.answered) == (2, 1)
    finally:
        await checker.close()


async def test_logins_waiting_at_the_gate_count_against_their_address() -> None:
    gate = AddressGate()
    deadline = time.monotonic() + 30
    holding = asyncio.Event()
    release = asyncio.Event()

    async def login(ip: str) -> None:
        async with gate.turn(ip, deadline) as held:
            assert held
            holding.set()
            await release.wait()

    tasks = [asyncio.create_task(login("198.51.100.1")) for _ in range(3)]
    await holding.wait()
    # One holds the lock, two wait behind it; an address with one login has none.
    assert (gate.behind("198.51.100.1"), gate.behind("203.0.113.5")) == (2, 0)
    release.set()
    await asyncio.gather(*tasks)
    assert (gate.behind("198.51.100.1"), len(gate)) == (0, 0)
