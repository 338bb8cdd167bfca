"""Wiring of the queue service: adapters around the pure core."""

from __future__ import annotations

from libs.common.runtime import Context


class QueueService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
