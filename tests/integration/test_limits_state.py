"""The shared state behind the limits, written by two policy replicas at once.

Each "replica" is the adapter on a NATS connection of its own, against a real
nats-server: compare-and-set must make concurrent writers add up, and two
replicas reaching a block together must make one block and one event.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta

import pytest
from nats.js import JetStreamContext

from libs.common.contract import subjects
from libs.common.contract.events import ClientBlocked, parse_access_event
from libs.common.runtime import bus
from libs.common.runtime.embedded_nats import EmbeddedNats
from services.ingress.adapters.leases import ConnectionLeases
from services.policy.adapters.blocks import BlockStore
from services.policy.adapters.connections import ConnectionCounter
from services.policy.adapters.counters import SlidingCounters
from services.policy.adapters.stores import FailedLoginCounter
from services.policy.core import HOUR, Block

CLIENT = "192.0.2.44"


@pytest.fixture
async def replicas(
    nats_server: EmbeddedNats, js: JetStreamContext
) -> AsyncIterator[tuple[JetStreamContext, JetStreamContext]]:
    other = await bus.connect([nats_server.url], name="replica-2")
    try:
        yield js, other.jetstream()
    finally:
        await other.close()


async def test_concurrent_counts_add_up(
    replicas: tuple[JetStreamContext, JetStreamContext],
) -> None:
    now = datetime.now(UTC)
    counters = [SlidingCounters(js, HOUR) for js in replicas]
    key = subjects.message_count_key(CLIENT)
    await asyncio.gather(*(counters[i % 2].add(key, now) for i in range(24)))
    count = await counters[0].get(key)
    assert count is not None and count.total(HOUR, now) == 24

    failures = [FailedLoginCounter(js) for js in replicas]
    # Reservations with no limit (0): each one counted, none refused.
    await asyncio.gather(*(failures[i % 2].reserve(CLIENT, 0, now) for i in range(24)))
    failed = await failures[1].get(CLIENT)
    assert failed is not None and failed.count == 24


async def test_two_replicas_blocking_together_make_one_block(
    replicas: tuple[JetStreamContext, JetStreamContext],
) -> None:
    now = datetime.now(UTC)
    stores = [BlockStore(js) for js in replicas]
    blocks = [
        Block(
            client_ip=CLIENT,
            reason=f"seen by replica {i}",
            rule="directory_harvest",
            start=now,
            end=now + timedelta(hours=1),
        )
        for i in (1, 2)
    ]
    results = await asyncio.gather(*(s.impose(b, now) for s, b in zip(stores, blocks, strict=True)))
    assert sorted(made for _, made in results) == [False, True]
    assert results[0][0] == results[1][0]  # both see the one block in force
    js = replicas[0]
    info = await js.stream_info(subjects.ACCESS_STREAM)
    assert info.state.messages == 1
    raw = await js.get_msg(subjects.ACCESS_STREAM, seq=info.state.first_seq)
    assert raw.data is not None
    event = parse_access_event(raw.data)
    assert isinstance(event, ClientBlocked) and event.client_ip == CLIENT
    assert [b.client_ip for b in await stores[1].active(now)] == [CLIENT]
    assert await stores[1].active(now + timedelta(hours=1)) == []  # over at its end

    lifted = await stores[1].lift(CLIENT, now, "root")
    assert lifted == results[0][0]
    assert await stores[0].get(CLIENT) is None
    assert await stores[0].active(now) == []


async def _until(what: str, check: Callable[[], Awaitable[bool]], limit_s: float = 5.0) -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.02)


async def test_a_replica_answers_from_its_watched_copy_of_the_blocks(
    replicas: tuple[JetStreamContext, JetStreamContext],
) -> None:
    now = datetime.now(UTC)
    maker, checker = BlockStore(replicas[0]), BlockStore(replicas[1])
    try:
        assert await checker.get(CLIENT) is None  # read from the bucket; the watch starts
        await _until("the watch to catch up", lambda: _watching(checker))
        assert checker.from_copy
        block = Block(
            client_ip=CLIENT,
            reason="r",
            rule="directory_harvest",
            start=now,
            end=now + timedelta(hours=1),
        )
        await maker.impose(block, now)

        async def seen() -> bool:
            return await checker.get(CLIENT) == block

        await _until("the other replica's block in the copy", seen)
        assert checker.from_copy
        await maker.lift(CLIENT, now, "root")

        async def gone() -> bool:
            return await checker.get(CLIENT) is None

        await _until("the lift in the copy", gone)
        assert checker.from_copy
    finally:
        await checker.close()
        await maker.close()


async def _watching(store: BlockStore) -> bool:
    return store.from_copy


async def test_leases_are_counted_per_address_and_released(
    replicas: tuple[JetStreamContext, JetStreamContext],
) -> None:
    leases = [ConnectionLeases(js, f"ingress-{i}", ttl=30) for i, js in enumerate(replicas)]
    counter = ConnectionCounter(replicas[0])
    for i in range(5):
        await leases[i % 2].acquire(f"s{i}", "::ffff:192.0.2.44", "smtp")
    await leases[0].acquire("other", "192.0.2.45", "smtp")
    assert await counter.count(CLIENT) == 5  # the mapped address is the same client
    assert await counter.count("192.0.2.45") == 1
    leases[1].release("s1")
    await leases[1].stop()  # every lease of a stopping instance goes
    assert await counter.count(CLIENT) == 3
    await leases[0].stop()
    assert await counter.count(CLIENT) == 0
