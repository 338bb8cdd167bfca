"""Wiring of the policy service: adapters around the pure core."""

from __future__ import annotations

from libs.common.runtime import Context


class PolicyService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass
