"""The queue partitions this replica owns: leases, fences and consumers, one set each.

Each replica keeps a member key with a short TTL in the leader bucket and, every
round (TICK_S), reckons its target share from the live members (shares.py). Below
target it tries the partitions' leases in its order of preference and takes what is
free (or its own slot's predecessor's, at once); above target for a few rounds it
gives the extras back. Taking partitions over, for the batch taken in one round:
open each one's fencing epoch, read their messages into the index (one read of the
stream, filtered on those partitions), then bind each one's two durable consumers
(events, fired timers) and fetch from them. Giving one back: stop fetching, finish
what was fetched, drop its messages from the index, release the lease so the next
replica takes it at once. A lease lost or a write fenced off gives the partition up
the same way, but leaves the lease alone (it is someone else's by then).

A replica that dies stops renewing: its leases and member key expire (6 s) and the
others, their targets grown, take its partitions in the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from nats.js import JetStreamContext

from libs.common.contract import subjects
from libs.common.runtime import consumers
from libs.common.runtime.fence import Fence, Fenced
from libs.common.runtime.kv import Bucket
from libs.common.runtime.lease import DEFAULT_TTL_S, Lease
from services.queue.adapters import consumer, shares, timers
from services.queue.adapters.index import read_states
from services.queue.adapters.processor import QueueProcessor

log = logging.getLogger(__name__)

TICK_S = 1.0
# How long a stop may take to give partitions back (within Kubernetes' 30 s grace).
STOP_LIMIT_S = 10.0
PARTITIONS = subjects.QUEUE_PARTITIONS

# Started with partition 0 and stopped with it (the orphan sweep: one replica runs it).
Task0 = Callable[[asyncio.Event], Coroutine[Any, Any, None]]


@dataclass
class Owned:
    partition: int
    lease: Lease
    fence: Fence
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    subs: list[JetStreamContext.PullSubscription] = field(default_factory=list)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


class Partitions:
    def __init__(
        self,
        js: JetStreamContext,
        processor: QueueProcessor,
        instance: str,
        slot: str | None,
        with_partition_0: Task0 | None = None,
        lease_ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self._js = js
        self._processor = processor
        self._instance = instance
        self._slot = slot
        self._bucket = Bucket(js, subjects.QUEUE_LEADER_BUCKET)
        # Keyed by slot where there is one: a successor in the same place replaces its
        # predecessor's key instead of counting as one member more until it expires.
        # Else by a name of this replica's own (two may share a process name in tests).
        self.member = subjects.queue_member_key(slot or f"{instance}.{uuid.uuid4().hex[:8]}")
        self._ttl_s = lease_ttl_s
        self._owned: dict[int, Owned] = {}
        self._leaving: set[int] = set()
        self._rounds_above = 0
        self._with_0 = with_partition_0
        self._task_0: tuple[asyncio.Event, asyncio.Task[None]] | None = None
        self._legacy: list[JetStreamContext.PullSubscription] = []
        self._legacy_tasks: list[asyncio.Task[None]] = []
        self._legacy_stopping = asyncio.Event()
        self._background: set[asyncio.Task[None]] = set()
        self.members: list[str] = []
        # The single lease of the versions before partitions, held by the owner of
        # partition 0: an old queue restarted during a rolling upgrade stands by on it
        # instead of deciding beside the new replicas.
        self._old_lease: Lease | None = None

    # --- what the processor and the operator API ask ----------------------------------

    def owned(self) -> list[int]:
        return sorted(p for p in self._owned if p not in self._leaving)

    def owns(self, queue_id: str) -> bool:
        return subjects.partition_of(queue_id) in self._owned

    def fence_of(self, queue_id: str) -> Fence:
        owned = self._owned.get(subjects.partition_of(queue_id))
        if owned is None:
            raise Fenced(f"{queue_id}: its partition is not this replica's")
        return owned.fence

    async def fenced(self, queue_id: str) -> None:
        """A write of this message's partition was refused: a newer owner has it."""
        self._spawn(self._drop(subjects.partition_of(queue_id), lost=True))

    # --- rounds -------------------------------------------------------------------------

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                await self.round()
            except Exception as exc:  # NATS away: the leases' own renewals decide
                log.warning("queue partitions: round failed: %s: %s", type(exc).__name__, exc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(TICK_S):
                    await stopping.wait()

    async def round(self) -> None:
        await self._js.publish(
            subjects.kv_subject(subjects.QUEUE_LEADER_BUCKET, self.member),
            self._instance.encode(),
            msg_ttl=self._ttl_s,
        )
        self.members = await self._live_members()
        want = shares.target(self.members, self.member, PARTITIONS)
        have = self.owned()
        self._rounds_above = self._rounds_above + 1 if len(have) > want else 0
        step = shares.plan(have, want, self._rounds_above)
        if step.take:
            await self._take(step.take)
        await self._hold_old_lease()
        if step.release:
            log.info(
                "queue partitions %s: handed back (%d members)", step.release, len(self.members)
            )
            await asyncio.gather(*(self._drop(p, lost=False) for p in step.release))

    async def _hold_old_lease(self) -> None:
        if 0 not in self._owned or 0 in self._leaving:
            return
        if self._old_lease is not None and self._old_lease.held:
            return
        lease = Lease(
            self._js,
            subjects.QUEUE_LEADER_BUCKET,
            subjects.QUEUE_LEADER_KEY,
            self._instance,
            ttl_s=self._ttl_s,
            slot=self._slot,
        )
        if await lease.try_acquire():

            async def lost() -> None:  # taken again next round if it can be
                return None

            lease.keep(lost)
            self._old_lease = lease

    async def _live_members(self) -> list[str]:
        """The member keys with a live value: a replica that left purged its key, and the
        purge marker, listed until it expires, must not count as a member."""
        prefix = subjects.QUEUE_MEMBER_PREFIX
        others = [k for k in await self._bucket.keys() if k.startswith(prefix) and k != self.member]
        looks = await asyncio.gather(*(self._bucket.last_value_revision(k) for k in others))
        return [self.member] + [k for k, (_, live) in zip(others, looks, strict=True) if live]

    async def _take(self, room: int) -> None:
        """Try leases in order of preference until `room` more are held, then open them.
        Tried `room` at a time, together: a lone replica starting takes all at once."""
        taken: dict[int, Lease] = {}
        order = [p for p in shares.preference(self.member, PARTITIONS) if p not in self._owned]
        while order and len(taken) < room:
            batch, order = order[: room - len(taken)], order[room - len(taken) :]
            leases = [self._lease(p) for p in batch]
            outcomes = await asyncio.gather(
                *(lease.try_acquire() for lease in leases), return_exceptions=True
            )
            for partition, lease, outcome in zip(batch, leases, outcomes, strict=True):
                if outcome is True:
                    taken[partition] = lease
                elif isinstance(outcome, Exception):  # NATS away: open what is held
                    log.warning("queue partition %d: lease not taken: %s", partition, outcome)
                    order = []
        if taken:
            await self._open(taken)

    def _lease(self, partition: int) -> Lease:
        return Lease(
            self._js,
            subjects.QUEUE_LEADER_BUCKET,
            subjects.queue_partition_key(partition),
            self._instance,
            ttl_s=self._ttl_s,
            slot=self._slot,
        )

    async def _open(self, leases: dict[int, Lease]) -> None:
        """Fence, read and bind the partitions whose leases were just taken."""
        try:
            if not self._owned and not self._legacy:
                # An older queue (one lease, one epoch for everything) still running is
                # fenced off before this one decides anything.
                await self._js.publish(subjects.QUEUE_EPOCH_SUBJECT, self._instance.encode())
            fences = {
                p: Fence(self._js, subjects.queue_epoch_subject(p), still_held=lease.fresh)
                for p, lease in leases.items()
            }
            await asyncio.gather(*(f.open_epoch(self._instance) for f in fences.values()))
            last = (await self._js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
            # Before the consumers start, so every later input lands on a complete index.
            self._processor.seen_up_to(last, leases)
            states = await read_states(self._js, set(leases), last)
        except Exception:
            await asyncio.gather(*(lease.release() for lease in leases.values()))
            raise
        for state in states.values():
            self._processor.index.update(state)
        self._processor.seed(states.values())
        opened = []
        for partition, lease in leases.items():
            owned = Owned(partition, lease, fences[partition])
            self._owned[partition] = owned
            lease.keep(self._lost_callback(partition))
            opened.append(owned)
        bound = await asyncio.gather(*(self._bind(o) for o in opened), return_exceptions=True)
        for owned, outcome in zip(opened, bound, strict=True):
            if isinstance(outcome, Exception):
                log.warning("queue partition %d: cannot bind: %s", owned.partition, outcome)
                await self._drop(owned.partition, lost=False)
        log.info(
            "queue partitions %s taken by %s (%d messages); owns %s",
            sorted(leases),
            self._instance,
            len(states),
            self.owned(),
        )
        if not self._legacy:
            await self._bind_legacy()
        if 0 in self._owned and self._task_0 is None and self._with_0 is not None:
            stop = asyncio.Event()
            self._task_0 = (stop, asyncio.create_task(self._with_0(stop), name="queue-p0-task"))

    async def _bind(self, owned: Owned) -> None:
        p = owned.partition
        loops = [
            (consumer.events_consumer(p), self._processor.handle, f"queue p{p}"),
            (timers.timers_consumer(p), self._processor.handle_timer, f"queue timers p{p}"),
        ]
        subs = await asyncio.gather(*(consumers.bind(self._js, d) for d, _, _ in loops))
        for sub, (_, handle, what) in zip(subs, loops, strict=True):
            owned.subs.append(sub)
            owned.tasks.append(
                asyncio.create_task(
                    consumers.fetch_loop(sub, handle, owned.stopping, consumer.FETCH, what),
                    name=what.replace(" ", "-"),
                )
            )

    async def _bind_legacy(self) -> None:
        """The consumers of the versions before partitions, read by every replica that
        owns partitions; each input is handled by its partition's owner (the processor
        hands the others back)."""
        loops = [
            (consumer.LEGACY_EVENTS_CONSUMER, self._processor.handle, "queue (old shape)"),
            (timers.LEGACY_TIMERS_CONSUMER, self._processor.handle_timer, "queue timers (old)"),
        ]
        for durable, handle, what in loops:
            sub = await consumers.bind(self._js, durable)
            self._legacy.append(sub)
            self._legacy_tasks.append(
                asyncio.create_task(
                    consumers.fetch_loop(sub, handle, self._legacy_stopping, consumer.FETCH, what),
                    name=what.replace(" ", "-"),
                )
            )

    def _lost_callback(self, partition: int) -> Callable[[], Awaitable[None]]:
        async def lost() -> None:
            self._spawn(self._drop(partition, lost=True))

        return lost

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _drop(self, partition: int, lost: bool) -> None:
        owned = self._owned.get(partition)
        if owned is None or partition in self._leaving:
            return
        self._leaving.add(partition)
        if lost:
            log.critical(
                "queue partition %d: lost by %s; no further decisions", partition, self._instance
            )
            self._owned.pop(partition, None)  # no new input of it from now on
        owned.stopping.set()
        if owned.tasks:
            await asyncio.gather(*owned.tasks, return_exceptions=True)
        for sub in owned.subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._owned.pop(partition, None)
        self._processor.forget_partitions({partition})
        if partition == 0 and self._task_0 is not None:
            stop, task = self._task_0
            self._task_0 = None
            stop.set()
            await asyncio.gather(task, return_exceptions=True)
        if partition == 0 and self._old_lease is not None:
            old, self._old_lease = self._old_lease, None
            await old.release()
        if lost:
            await owned.lease.abandon()
        else:
            await owned.lease.release()  # the next replica takes it at once
        self._leaving.discard(partition)

    async def stop(self, limit_s: float = STOP_LIMIT_S) -> None:
        """Give every partition back (a peer takes them at once), leave. Bounded: with
        NATS not answering, what is not given back by then expires by its TTL."""
        try:
            async with asyncio.timeout(limit_s):
                await self._give_everything_back()
        except TimeoutError:
            log.warning("queue partitions: not all given back in %.0f s; left to expire", limit_s)

    async def _give_everything_back(self) -> None:
        await asyncio.gather(
            *(self._drop(p, lost=False) for p in list(self._owned)), return_exceptions=True
        )
        self._legacy_stopping.set()
        if self._legacy_tasks:
            await asyncio.gather(*self._legacy_tasks, return_exceptions=True)
        for sub in self._legacy:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self._bucket.purge(self.member, marker_ttl_s=1)
