"""Wiring of the queue service: the partitions this replica owns (each with its lease,
fence and two consumers: events, fired timers) around the pure core, the in-memory
index of their messages, and the operator's endpoints."""

from __future__ import annotations

import asyncio
import logging

from libs.common.config import Config
from libs.common.mail.bodies import BodyStore
from libs.common.runtime import metrics
from libs.common.runtime.lease import slot_from_env
from libs.common.runtime.liveconfig import Commit
from libs.common.runtime.service import Context
from services.queue.adapters.api import QueueApi
from services.queue.adapters.index import QueueIndex
from services.queue.adapters.orphans import OrphanSweeper, StreamBodies, SweepSettings
from services.queue.adapters.partitions import Partitions
from services.queue.adapters.processor import QueueProcessor
from services.queue.core import Routing, Timing

log = logging.getLogger(__name__)

# How long a stop waits for a round in progress (taking partitions over) to finish.
ROUND_WAIT_S = 10.0


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
        self.processor: QueueProcessor | None = None
        self.partitions: Partitions | None = None
        self._stats: metrics.QueueStatsCollector | None = None
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
        routing = Routing.of(config.delivery.mode, config.server.local_domains)
        timing = timing_of(config)
        bodies = BodyStore(js)
        index = QueueIndex(timing)
        # The partitions' leases, fences and consumers; the processor asks it which
        # messages are this replica's and which epoch their events carry.
        sweeper = OrphanSweeper(js, StreamBodies(bodies), SweepSettings.from_env())
        processor = QueueProcessor(js, bodies, routing, timing, index)
        partitions = Partitions(
            js, processor, self.ctx.instance, slot_from_env(), with_partition_0=sweeper.run
        )
        processor.own_through(partitions.owns, partitions.fence_of, partitions.fenced)
        self.processor = processor
        self.partitions = partitions
        # The first round before the service counts as started: a lone replica (or the
        # first of several) owns its share, read into the index, when start returns.
        try:
            await partitions.round()
        except Exception as exc:  # NATS slow just now: the rounds that follow try again
            log.warning("queue: first round failed: %s: %s", type(exc).__name__, exc)
        log.info(
            "queue: %d messages in the queue at start; partitions %s",
            len(index),
            partitions.owned(),
        )
        try:
            self._stats = metrics.register_queue_stats(index.stats, index.ages)
        except ValueError:  # a second replica in one process (tests): the first reports
            self._stats = None
        await QueueApi(js, processor, partitions).register(self.ctx.micro)
        self._tasks = [asyncio.create_task(partitions.run(self._stopping), name="queue-partitions")]

    async def stop(self) -> None:
        if self._stats is not None:
            metrics.unregister(self._stats)
        self._stopping.set()
        if self._tasks:
            # A round stuck on NATS not answering is cut short: what it took expires.
            _, late = await asyncio.wait(self._tasks, timeout=ROUND_WAIT_S)
            for task in late:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.partitions is not None:
            await self.partitions.stop()  # the others take them over at once
