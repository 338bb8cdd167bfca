"""Wiring of the queue service: the events consumer around the pure core."""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext

from libs.common import subjects
from libs.common.runtime import Context
from services.queue.adapters.consumer import fetch_loop, subscribe
from services.queue.adapters.processor import QueueProcessor
from services.queue.core import Routing

log = logging.getLogger(__name__)


class QueueService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None

    async def start(self) -> None:
        config = self.ctx.config
        routing = Routing.of(config.delivery.mode, config.server.local_domains)
        bodies = await self.ctx.js.object_store(subjects.BODIES_BUCKET)
        processor = QueueProcessor(self.ctx.js, bodies, routing)
        self._sub = await subscribe(self.ctx.js)
        self._task = asyncio.create_task(
            fetch_loop(self._sub, processor.handle, self._stopping), name="queue-fetch"
        )

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self._sub is not None:
            await self._sub.unsubscribe()
