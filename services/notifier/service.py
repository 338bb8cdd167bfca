"""Wiring of the notifier service: the trigger consumer around the pure core."""

from __future__ import annotations

import asyncio
import logging

from nats.js import JetStreamContext

from libs.common.config import Config
from libs.common.mail import languages
from libs.common.runtime import consumers
from libs.common.runtime.liveconfig import Commit
from libs.common.runtime.service import Context
from services.notifier.adapters.catalogs import load_catalogs
from services.notifier.adapters.consumer import FETCH, TRIGGERS_CONSUMER
from services.notifier.adapters.processor import NotifierProcessor

log = logging.getLogger(__name__)


class NotifierService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._processor: NotifierProcessor | None = None
        ctx.live.on_change(self._prepare)

    def _prepare(self, config: Config, revision: int) -> Commit:
        """Report language, hostname and postmaster for the next report."""
        language = languages.match(config.queue.report_language) or languages.DEFAULT

        def commit() -> None:
            if self._processor is not None:
                processor = self._processor
                processor._language = language
                processor._hostname = config.server.hostname
                processor._postmaster = config.server.postmaster_address

        return commit

    async def start(self) -> None:
        config = self.ctx.config
        language = languages.match(config.queue.report_language) or languages.DEFAULT
        processor = NotifierProcessor(
            self.ctx.js,
            load_catalogs(),
            hostname=config.server.hostname,
            postmaster=config.server.postmaster_address,
            language=language,
        )
        self._processor = processor
        self._sub = await consumers.bind(self.ctx.js, TRIGGERS_CONSUMER)
        self._task = asyncio.create_task(
            consumers.fetch_loop(self._sub, processor.handle, self._stopping, FETCH, "notifier"),
            name="notifier-fetch",
        )

    async def stop(self) -> None:
        self._stopping.set()
        if self._task is not None:
            await self._task
        if self._sub is not None:
            await self._sub.unsubscribe()
