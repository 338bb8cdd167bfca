"""Wiring of the queue service: two consumers (events, fired timers) around the pure core,
the in-memory index rebuilt from the log at start, and the operator's endpoints."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

from nats.js import JetStreamContext

from libs.common.config import Config
from libs.common.contract import subjects
from libs.common.mail.bodies import BodyStore
from libs.common.runtime import consumers, metrics
from libs.common.runtime.fence import Fence
from libs.common.runtime.lease import Lease, slot_from_env
from libs.common.runtime.liveconfig import Commit
from libs.common.runtime.service import Context
from services.queue.adapters import consumer, timers
from services.queue.adapters.api import QueueApi
from services.queue.adapters.index import QueueIndex, read_all_states
from services.queue.adapters.orphans import OrphanSweeper, StreamBodies, SweepSettings
from services.queue.adapters.processor import QueueProcessor
from services.queue.core import Routing, Timing

log = logging.getLogger(__name__)


def timing_of(config: Config) -> Timing:
    queue = config.queue
    return Timing(
        retry_interval=queue.retry_interval,
        warn_after=queue.warn_after,
        bounce_after=queue.bounce_after,
    )


class QueueService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[JetStreamContext.PullSubscription] = []
        self.processor: QueueProcessor | None = None
        self._stats: metrics.QueueStatsCollector | None = None
        self._lease: Lease | None = None
        ctx.live.on_change(self._prepare)

    def _prepare(self, config: Config, revision: int) -> Commit:
        """Routing (delivery.mode, local domains) and retry, warning and bounce times for
        the next decision (and the listing); jobs already out keep their destination."""
        timing = timing_of(config)
        routing = Routing.of(config.delivery.mode, config.server.local_domains)

        def commit() -> None:
            if self.processor is not None:
                self.processor._timing = timing
                self.processor._routing = routing
                self.processor.index._timing = timing

        return commit

    async def start(self) -> None:
        config = self.ctx.config
        js = self.ctx.js
        # One writer: a second queue process stands by here until the first is gone; a
        # successor in the same slot (MAILBUS_SLOT) takes over from its predecessor at once.
        self._lease = Lease(
            js,
            subjects.QUEUE_LEADER_BUCKET,
            subjects.QUEUE_LEADER_KEY,
            self.ctx.instance,
            slot=slot_from_env(),
        )
        await self._lease.acquire()
        self._lease.keep(self._lost)
        # Before the first decision: from now on a predecessor still writing is refused.
        fence = Fence(js, subjects.QUEUE_EPOCH_SUBJECT)
        await fence.open_epoch(self.ctx.instance)
        routing = Routing.of(config.delivery.mode, config.server.local_domains)
        timing = timing_of(config)
        bodies = BodyStore(js)
        index = QueueIndex(timing)
        processor = QueueProcessor(
            js, bodies, routing, timing, index, fence=fence, on_fenced=self._lost
        )
        self.processor = processor
        # Before the consumers start, so every later input lands on a complete index.
        processor.seen_up_to((await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq)
        states = await read_all_states(js)
        for state in states.values():
            index.update(state)
        processor.seed(states.values())
        log.info("queue: %d messages in the queue at start", len(index))
        self._stats = metrics.register_queue_stats(index.stats, index.ages)
        await QueueApi(js, processor).register(self.ctx.micro)
        events_sub = await consumers.bind(js, consumer.EVENTS_CONSUMER)
        timers_sub = await consumers.bind(js, timers.TIMERS_CONSUMER)
        self._subs = [events_sub, timers_sub]
        loops = [
            (events_sub, processor.handle, "queue", "queue-events"),
            (timers_sub, processor.handle_timer, "queue timers", "queue-timers"),
        ]
        self._tasks = [
            asyncio.create_task(
                consumers.fetch_loop(sub, handle, self._stopping, consumer.FETCH, what), name=name
            )
            for sub, handle, what, name in loops
        ]
        # Bodies a killed ingress stored without their event: only the lease holder sweeps.
        sweeper = OrphanSweeper(js, StreamBodies(bodies), SweepSettings.from_env())
        self._tasks.append(
            asyncio.create_task(sweeper.run(self._stopping), name="queue-orphan-bodies")
        )

    async def stop(self) -> None:
        if self._stats is not None:
            metrics.unregister(self._stats)
        self._stopping.set()
        if self._tasks:
            await asyncio.gather(*self._tasks)
        for sub in self._subs:
            await sub.unsubscribe()
        self._subs = []
        if self._lease is not None:
            await self._lease.release()  # the standby takes over at once

    async def _lost(self) -> None:
        """Another process holds the lease now (this one was cut off longer than its
        TTL): stop deciding at once, then end the process so its supervisor
        (Kubernetes, `mailbus up`) starts it again as a standby. Also called when a
        write was fenced off, perhaps several times: once is enough."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        log.critical("queue: lease lost; no further decisions from %s", self.ctx.instance)
        os.kill(os.getpid(), signal.SIGTERM)
