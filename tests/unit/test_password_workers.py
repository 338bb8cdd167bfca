"""The password worker pool: real worker processes, real argon2 checks, real signals.

A worker runs niced; one that dies (idle or mid-check) is replaced and its
check reported lost; a check whose deadline passes before a worker is free is
never sent to one; closing the pool ends every worker.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from argon2 import PasswordHasher, Type

from services.policy.adapters.password_workers import (
    NICE,
    CheckExpired,
    CheckLost,
    PasswordWorkers,
)
from services.policy.adapters.passwords import PasswordChecker, Verdict
from tests.support.streams import eventually

# Costly enough (a second or so under load) that a signal lands during the check.
COSTLY = PasswordHasher(time_cost=40, memory_cost=32768, parallelism=1, type=Type.ID)
COSTLY_HASH = COSTLY.hash("right")
QUICK_HASH = PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1, type=Type.ID).hash("ok")


@pytest_asyncio.fixture
async def pool() -> AsyncIterator[PasswordWorkers]:
    workers = PasswordWorkers(1)
    await workers.start()
    try:
        yield workers
    finally:
        await workers.close()


def soon(seconds: float = 60.0) -> float:
    return time.monotonic() + seconds


async def replaced(pool: PasswordWorkers, old: list[int]) -> bool:
    return len(pool.pids) == pool.size and not set(pool.pids) & set(old)


async def test_workers_run_niced_and_answer(pool: PasswordWorkers) -> None:
    (pid,) = pool.pids
    expected = min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE)
    assert os.getpriority(os.PRIO_PROCESS, pid) == expected
    assert await pool.check(QUICK_HASH, "ok", soon()) is True
    assert await pool.check(QUICK_HASH, "not ok", soon()) is False
    # Unknown account (no hash) and a malformed one never match.
    assert await pool.check(None, "ok", soon()) is False
    assert await pool.check("$argon2id$garbage", "ok", soon()) is False
    assert pool.answered == 4


async def test_a_worker_killed_while_idle_is_replaced(pool: PasswordWorkers) -> None:
    old = pool.pids
    os.kill(old[0], signal.SIGKILL)
    await eventually(lambda: replaced(pool, old), "a new worker", within=60)
    assert pool.restarts == 1
    assert await pool.check(QUICK_HASH, "ok", soon()) is True


async def test_a_worker_killed_mid_check_loses_only_that_check(pool: PasswordWorkers) -> None:
    old = pool.pids
    check = asyncio.create_task(pool.check(COSTLY_HASH, "right", soon()))
    await asyncio.sleep(0.05)  # the request is on its way, the check under way
    os.kill(old[0], signal.SIGKILL)
    with pytest.raises(CheckLost):
        await check
    await eventually(lambda: replaced(pool, old), "a new worker", within=60)
    assert (pool.restarts, pool.answered) == (1, 0)
    assert await pool.check(QUICK_HASH, "ok", soon()) is True


async def test_no_worker_before_the_deadline_means_no_check(pool: PasswordWorkers) -> None:
    busy = asyncio.create_task(pool.check(COSTLY_HASH, "wrong", soon()))
    await asyncio.sleep(0)
    with pytest.raises(CheckExpired):
        await pool.check(QUICK_HASH, "ok", soon(0.01))
    with pytest.raises(CheckExpired):
        await pool.check(QUICK_HASH, "ok", soon(-1))
    assert await busy is False
    # Only the one that had the worker reached it; the worker is idle again.
    assert pool.answered == 1
    assert await pool.check(QUICK_HASH, "ok", soon()) is True


async def test_a_caller_that_gives_up_leaves_the_worker_usable(pool: PasswordWorkers) -> None:
    check = asyncio.create_task(pool.check(COSTLY_HASH, "right", soon()))
    await asyncio.sleep(0.05)
    check.cancel()
    with pytest.raises(asyncio.CancelledError):
        await check
    # The worker finishes the abandoned check, then takes the next one.
    assert await pool.check(QUICK_HASH, "ok", soon()) is True
    assert (pool.answered, pool.restarts) == (2, 0)


async def test_a_lost_check_is_answered_lost_and_the_slot_freed() -> None:
    checker = PasswordChecker(workers=1)
    await checker.start()
    try:
        old = checker.pool.pids
        check = asyncio.create_task(checker.verify(COSTLY_HASH, "right", soon()))
        await asyncio.sleep(0.05)
        os.kill(old[0], signal.SIGKILL)
        assert await check is Verdict.LOST
        assert (checker.running, checker.dropped[Verdict.LOST]) == (0, 1)
        # Waits for the replacement, within its deadline.
        assert await checker.verify(QUICK_HASH, "ok", soon()) is Verdict.MATCH
    finally:
        await checker.close()


async def test_close_ends_every_worker() -> None:
    workers = PasswordWorkers(2)
    await workers.start()
    pids = workers.pids
    assert len(pids) == 2
    await workers.close()
    assert workers.pids == []
    # Reaped, not only signalled: no process of that id is left (or it is another's).
    assert not [pid for pid in pids if "password_workers" in _cmdline(pid)]
    assert workers.restarts == 0


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""  # no such process
