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
from libs.common.contract.policy import HeldConnections
from libs.common.runtime import bus
from libs.common.runtime.embedded_nats import EmbeddedNats
from services.ingress.adapters.connections import ConnectionTable
from services.policy.adapters.blocks import BlockStore
from services.policy.adapters.connections import ConnectionCounter, Connections
from services.policy.adapters.counters import SlidingCounters
from services.policy.adapters.stores import FailedLoginCounter
from services.policy.core import HOUR, Block
from tests.support.streams import eventually

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


async def test_connections_are_counted_per_address_across_instances(
    nats_server: EmbeddedNats, js: JetStreamContext
) -> None:
    """Two ingress tables and two policy copies, each on its own connection: every copy
    sees the other instance's connections, and a stopping instance's go at once."""
    ncs = [await bus.connect([nats_server.url], name=f"replica-{i}") for i in range(4)]
    try:
        ingress = [ConnectionTable(nc, f"ingress-{i}", ttl=30) for i, nc in enumerate(ncs[:2])]
        policies = [Connections(nc) for nc in ncs[2:]]
        for policy in policies:
            await policy.start()
        for table in ingress:
            await table.start()
        held = [ingress[i % 2].acquire(f"s{i}", "::ffff:192.0.2.44") for i in range(5)]
        ingress[0].acquire("other", "192.0.2.45")
        assert held[4] == HeldConnections(instance=ingress[0].instance, count=3)

        async def counted(expected: int, ip: str = CLIENT) -> bool:
            # What a query from instance 1 with no connection of its own is told: what
            # instance 0 holds, learnt from its reports only.
            asking = HeldConnections(instance=ingress[1].instance, count=0)
            return [await p.count(ip, asking) for p in policies] == [expected] * 2

        # The mapped address is the same client: instance 0 holds s0, s2 and s4.
        await eventually(lambda: counted(3), "both copies count instance 0's three")
        await eventually(lambda: counted(1, "192.0.2.45"), "and one from 192.0.2.45")
        mine = HeldConnections(instance=ingress[0].instance, count=3)
        assert await policies[0].count(CLIENT, mine) == 5  # its own three, and s1 and s3
        ingress[0].release("s0")
        await eventually(lambda: counted(2), "a closed connection no longer counts")
        await ingress[0].stop()  # every connection of a stopping instance goes
        await eventually(lambda: counted(0), "nothing of instance 0 counts")
        await eventually(lambda: counted(0, "192.0.2.45"), "nothing from 192.0.2.45")
        await ingress[1].stop()
        for policy in policies:
            await policy.stop()
    finally:
        for nc in ncs:
            await nc.close()


async def test_a_late_policy_replica_asks_for_the_tables(
    nats_server: EmbeddedNats, js: JetStreamContext
) -> None:
    """Started after the connections were opened, a policy replica's hello brings every
    instance's table at once, not at its next heartbeat (30 s here)."""
    ncs = [await bus.connect([nats_server.url], name=f"late-{i}") for i in range(2)]
    try:
        table = ConnectionTable(ncs[0], "ingress-late", ttl=30)
        await table.start()
        for i in range(3):
            table.acquire(f"late{i}", CLIENT)
        await asyncio.sleep(0.2)  # reports sent before the policy replica exists
        policy = Connections(ncs[1])
        await policy.start()

        async def counted() -> bool:
            return await policy.count(CLIENT, None) == 3

        await eventually(counted, "the late replica counts the three", within=5)
        await table.stop()
        await policy.stop()
    finally:
        for nc in ncs:
            await nc.close()


async def test_a_copy_that_lost_an_instance_asks_for_its_table(
    nats_server: EmbeddedNats, js: JetStreamContext
) -> None:
    """Every report of an instance lost for longer than its TTL (the copy has forgotten
    it): its next change brings a hello, and its whole table comes at once, not at its
    next heartbeat (20 s here). The policy replica's clock is moved on by hand."""
    ncs = [await bus.connect([nats_server.url], name=f"lost-{i}") for i in range(2)]
    now = [1000.0]
    try:
        table = ConnectionTable(ncs[0], "ingress-lost", ttl=60)
        policy = Connections(ncs[1], clock=lambda: now[0])
        await policy.start()
        await table.start()
        table.acquire("l1", CLIENT)
        table.acquire("l2", CLIENT)

        async def counted(expected: int) -> bool:
            return await policy.count(CLIENT, None) == expected

        await eventually(lambda: counted(2), "both connections counted", within=5)
        now[0] += 61  # as if no heartbeat had arrived for longer than the TTL
        assert await policy.count(CLIENT, None) == 0
        table.acquire("l3", "192.0.2.99")  # a change elsewhere in the table
        await eventually(lambda: counted(2), "the whole table back", within=5)
        await table.stop()
        await policy.stop()
    finally:
        for nc in ncs:
            await nc.close()


async def test_an_old_ingress_lease_still_counts(
    nats_server: EmbeddedNats, js: JetStreamContext
) -> None:
    """Rolling upgrade: an ingress of the previous version writes a lease into the bucket
    and sends no count. Its query is counted from the bucket; after it, the new
    instances' queries count the bucket's leases too."""
    nc = await bus.connect([nats_server.url], name="policy-upgrade")
    try:
        await bus.ensure_topology(js)
        policy = Connections(nc, ConnectionCounter(nc.jetstream()))
        await policy.start()
        key = subjects.connection_lease_key(CLIENT, "old-ingress", "s1")
        await js.publish(subjects.kv_subject(subjects.CONNECTIONS_BUCKET, key), b"{}")
        new = HeldConnections(instance="new-ingress.1", count=1)
        assert await policy.count(CLIENT, new) == 1  # no old ingress seen yet: not read
        assert await policy.count(CLIENT, None) == 1  # the old ingress's own connection
        assert await policy.count(CLIENT, new) == 2  # from now on both are counted
        await policy.stop()
    finally:
        await nc.close()
