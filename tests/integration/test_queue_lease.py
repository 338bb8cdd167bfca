"""One queue decides per partition at a time: the single-holder lease on a real nats-server."""

from __future__ import annotations

import asyncio
import signal

import pytest
from nats.js import JetStreamContext

from libs.common.config import load_config_text
from libs.common.contract import subjects
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.fence import Fence, Fenced
from libs.common.runtime.lease import Lease
from libs.common.runtime.service import Running, start_service
from services.queue.adapters.partitions import TICK_S, Partitions
from services.queue.service import QueueService

BUCKET, KEY = subjects.QUEUE_LEADER_BUCKET, "test"


async def test_one_holder_standby_takes_over_after_release(js: JetStreamContext) -> None:
    first = Lease(js, BUCKET, KEY, "first", ttl_s=3)
    second = Lease(js, BUCKET, KEY, "second", ttl_s=3)
    await first.acquire()
    waiting = asyncio.create_task(second.acquire())
    await asyncio.sleep(1.5)
    assert not waiting.done() and first.held and not second.held
    await first.release()
    async with asyncio.timeout(5):
        await waiting
    assert second.held
    await second.release()


async def test_a_silent_holder_expires_and_the_renewing_one_keeps_it(js: JetStreamContext) -> None:
    lost: list[str] = []

    async def on_lost() -> None:
        lost.append("renewing")

    # A holder that dies without a word (no renewal, no release) frees the key by its TTL.
    silent = Lease(js, BUCKET, KEY, "silent", ttl_s=2)
    await silent.acquire()
    renewing = Lease(js, BUCKET, KEY, "renewing", ttl_s=2)
    async with asyncio.timeout(8):
        await renewing.acquire()
    renewing.keep(on_lost)
    # Renewed every TTL/3, it outlives several TTLs, and a third process stays out.
    third = Lease(js, BUCKET, KEY, "third", ttl_s=2)
    waiting = asyncio.create_task(third.acquire())
    await asyncio.sleep(5)
    assert renewing.held and not waiting.done() and lost == []
    waiting.cancel()
    await renewing.release()


async def test_a_holder_whose_key_moved_on_learns_it_lost(js: JetStreamContext) -> None:
    lost = asyncio.Event()

    async def on_lost() -> None:
        lost.set()

    holder = Lease(js, BUCKET, KEY, "holder", ttl_s=3)
    await holder.acquire()
    holder.keep(on_lost)
    # Someone else writes the key (as after a partition longer than the TTL).
    kv = await js.key_value(BUCKET)
    await kv.put(KEY, b"usurper")
    async with asyncio.timeout(5):
        await lost.wait()
    assert not holder.held
    await holder.release()  # must not remove the other holder's key
    entry = await kv.get(KEY)
    assert entry.value == b"usurper"


async def test_a_second_queue_service_shares_the_partitions(nats_server: EmbeddedNats) -> None:
    """Two replicas split the partitions between them, never both owning one; once the
    first stops, the second owns them all at once (the first gave its leases back)."""
    config = load_config_text("server: {hostname: mx.example.test}\n")
    first = await start_service("queue", QueueService, config, [nats_server.url])
    second = await start_service("queue", QueueService, config, [nats_server.url])
    a, b = _partitions(first), _partitions(second)
    assert a.owned() == list(range(subjects.QUEUE_PARTITIONS))  # alone when it started
    half = subjects.QUEUE_PARTITIONS // 2
    async with asyncio.timeout(20):
        while not (len(a.owned()) == len(b.owned()) == half):
            assert not set(a.owned()) & set(b.owned())
            await asyncio.sleep(0.1)
    await first.close()
    await asyncio.sleep(2 * TICK_S)  # two rounds: the first gave its leases back at once
    assert len(b.owned()) == subjects.QUEUE_PARTITIONS
    await second.close()


def _partitions(running: Running) -> Partitions:
    service = running.service
    assert isinstance(service, QueueService) and service.partitions is not None
    return service.partitions


async def test_a_standby_outlives_nats_not_answering(nats_server: EmbeddedNats) -> None:
    """Seen in the chaos run: a standby whose look at the lease timed out while a NATS node
    was down died of it, and once the holder (cut off too) stepped down, no queue was left.
    Here nats-server is paused (SIGSTOP): connected, but no request is answered."""
    from libs.common.runtime import bus

    nc = await bus.connect([nats_server.url], name="test")
    proc = nats_server.proc
    assert proc is not None
    try:
        js = nc.jetstream(timeout=0.5)
        await bus.ensure_topology(js)
        holder = Lease(js, BUCKET, KEY, "holder", ttl_s=3)
        await holder.acquire()
        standby = Lease(js, BUCKET, KEY, "standby", ttl_s=3)
        waiting = asyncio.create_task(standby.acquire())
        await asyncio.sleep(0.5)
        proc.send_signal(signal.SIGSTOP)
        try:
            await asyncio.sleep(2.5)  # the standby's looks at the lease time out
        finally:
            proc.send_signal(signal.SIGCONT)
        assert not waiting.done(), waiting.exception()
        async with asyncio.timeout(15):
            await waiting  # the holder's key expires by its TTL
        assert standby.held
        await standby.release()
    finally:
        await nc.close()


async def test_a_stale_holder_may_not_publish_a_job(js: JetStreamContext) -> None:
    # A holder whose renewals stopped (stalled, cut off) for a whole TTL: its epoch is
    # still the last one, so no event write would be refused yet, but a standby may hold
    # the lease by now, so the check made before a job (which no epoch fences) refuses.
    stale = Lease(js, BUCKET, KEY, "stale", ttl_s=1)
    await stale.acquire()  # and no renewer: as if the process stalled
    fence = Fence(js, subjects.queue_epoch_subject(0), still_held=stale.fresh)
    await fence.open_epoch("stale")
    fence.check()  # just written: surely ours
    await asyncio.sleep(1.2)
    assert stale.held and not stale.fresh()
    with pytest.raises(Fenced):
        fence.check()
    await stale.release()
