"""A single-holder lease on the bus: at most one process holds it at a time.

The queue is the one writer of every message's decisions; the manifests run one
replica, and this lease is what keeps a second one (a partitioned node's old
pod, an operator's mistake) from deciding in parallel. The holder writes its
name to one KV key with a TTL and renews it by compare-and-set every TTL/3; a
holder that dies stops renewing and the key expires, so a standby takes over
within one TTL. A holder that finds the key moved on has lost the lease and
must stop at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext

from libs.common.runtime.kv import Bucket

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 15.0


class Lease:
    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        key: str,
        holder: str,
        ttl_s: float = DEFAULT_TTL_S,
    ) -> None:
        self._bucket = Bucket(js, bucket)
        self._key = key
        self.holder = holder
        self.ttl_s = ttl_s
        self._revision = 0
        self._renewer: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        return self._revision > 0

    async def acquire(self) -> None:
        """Wait until this process holds the lease."""
        announced = False
        while not await self._try_take():
            if not announced:
                entry = await self._bucket.get(self._key)
                other = entry.value.decode(errors="replace") if entry and entry.value else "?"
                log.warning("lease %s held by %s; standing by", self._key, other)
                announced = True
            await asyncio.sleep(self.ttl_s / 3)
        log.info("lease %s taken by %s", self._key, self.holder)

    async def _try_take(self) -> bool:
        entry = await self._bucket.get(self._key)
        if entry is not None and entry.value:
            return False  # a live holder (an expired key reads as absent)
        # Absent, or released: expect whatever message the key last had (a purge marker).
        return await self._write(await self._bucket.last_revision(self._key))

    async def _write(self, last_revision: int) -> bool:
        revision = await self._bucket.swap(
            self._key, self.holder.encode(), last_revision, self.ttl_s
        )
        if revision is None:
            return False
        self._revision = revision
        return True

    def keep(self, on_lost: Callable[[], Awaitable[None]]) -> None:
        """Renew in the background; call `on_lost` once if the lease is lost."""
        self._renewer = asyncio.create_task(self._renew(on_lost), name=f"lease-{self._key}")

    async def _renew(self, on_lost: Callable[[], Awaitable[None]]) -> None:
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                renewed = await self._write(self._revision)
            except Exception as exc:  # NATS away: try again; the TTL decides
                log.warning("lease %s not renewed: %s", self._key, exc)
                continue
            if not renewed:
                log.error("lease %s lost by %s; stopping", self._key, self.holder)
                self._revision = 0
                await on_lost()
                return

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewer
        if self.held:
            self._revision = 0
            try:
                await self._bucket.purge(self._key)
            except Exception as exc:  # it expires by itself
                log.warning("lease %s not released: %s", self._key, exc)
