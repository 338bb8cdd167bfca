"""A single-holder lease on the bus: at most one process holds it at a time.

The queue is the one writer of every message's decisions: one lease per queue
partition (services/queue/adapters/partitions.py) keeps two replicas from deciding
for the same partition's messages in parallel. The holder writes its
name to one KV key with a TTL and renews it by compare-and-set every TTL/3; a
holder that dies stops renewing and the key expires, so a standby takes over
within one TTL. A holder that finds the key moved on has lost the lease and
must stop at once; so does one that could not renew for a whole TTL (cut off
from NATS, or stalled), since by then a standby may hold it.

A holder may name its *slot* (MAILBUS_SLOT: the pod, or `mailbus up`'s queue
child): the place it runs in, which at most one process occupies at a time. A
process that finds the lease held by its own slot is that slot's successor (its
predecessor was killed and restarted in place) and takes the lease over at
once, by compare-and-set on the predecessor's revision, instead of waiting for
the TTL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable

from nats.js import JetStreamContext

from libs.common.runtime.kv import Bucket

log = logging.getLogger(__name__)

DEFAULT_TTL_S = 6.0
SLOT_ENV = "MAILBUS_SLOT"


def slot_from_env() -> str | None:
    slot = os.environ.get(SLOT_ENV, "").strip()
    return slot or None


def holder_value(slot: str | None, holder: str) -> bytes:
    return f"{slot}|{holder}".encode() if slot else holder.encode()


def slot_of(value: bytes) -> str | None:
    text = value.decode(errors="replace")
    return text.split("|", 1)[0] if "|" in text else None


class Lease:
    def __init__(
        self,
        js: JetStreamContext,
        bucket: str,
        key: str,
        holder: str,
        ttl_s: float = DEFAULT_TTL_S,
        slot: str | None = None,
    ) -> None:
        self._bucket = Bucket(js, bucket)
        self._key = key
        self.holder = holder
        self.slot = slot
        self.ttl_s = ttl_s
        self._revision = 0
        self._renewed_at = 0.0
        self._renewer: asyncio.Task[None] | None = None

    @property
    def held(self) -> bool:
        return self._revision > 0

    def fresh(self) -> bool:
        """Held, and written less than one TTL ago: no standby can hold it yet. A holder
        stalled or cut off past that must not act before its renewer has looked."""
        if not self.held:
            return False
        return asyncio.get_running_loop().time() - self._renewed_at < self.ttl_s

    async def acquire(self) -> None:
        """Wait until this process holds the lease."""
        announced = False
        while True:
            try:
                if await self._try_take():
                    break
                if not announced:
                    entry = await self._bucket.get(self._key)
                    other = entry.value.decode(errors="replace") if entry and entry.value else "?"
                    log.warning("lease %s held by %s; standing by", self._key, other)
                    announced = True
            except Exception as exc:
                # NATS away (a node killed, a leader election): a standby that died of it
                # would leave no queue once the holder, cut off as well, steps down.
                log.warning("lease %s: cannot look at it now: %s; standing by", self._key, exc)
            await asyncio.sleep(self.ttl_s / 3)
        log.info("lease %s taken by %s", self._key, self.holder)

    async def try_acquire(self) -> bool:
        """Take the lease if it is free (or this slot's predecessor's) now; never waits."""
        if await self._try_take():
            log.info("lease %s taken by %s", self._key, self.holder)
            return True
        return False

    async def _try_take(self) -> bool:
        entry = await self._bucket.get(self._key)
        if entry is not None and entry.value:
            if self.slot is None or slot_of(entry.value) != self.slot:
                return False  # a live holder (an expired key reads as absent)
            # Our own slot's predecessor: it is gone, since we run in its place.
            log.warning(
                "lease %s: taking over from %s, this slot's predecessor",
                self._key,
                entry.value.decode(errors="replace"),
            )
            return await self._write(int(entry.revision or 0))
        # Absent, or released: expect whatever message the key last had (a purge marker).
        return await self._write(await self._bucket.last_revision(self._key))

    async def _write(self, last_revision: int) -> bool:
        started = asyncio.get_running_loop().time()
        revision = await self._bucket.swap(
            self._key, holder_value(self.slot, self.holder), last_revision, self.ttl_s
        )
        if revision is None:
            return False
        self._revision = revision
        # From when the write was sent: the key's TTL may have started no later.
        self._renewed_at = started
        return True

    def keep(self, on_lost: Callable[[], Awaitable[None]]) -> None:
        """Renew in the background; call `on_lost` once if the lease is lost."""
        self._renewer = asyncio.create_task(self._renew(on_lost), name=f"lease-{self._key}")

    async def _renew(self, on_lost: Callable[[], Awaitable[None]]) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.ttl_s / 3)
            try:
                renewed = await self._write(self._revision)
            except Exception as exc:  # NATS away: try again while the TTL lasts
                log.warning("lease %s not renewed: %s", self._key, exc)
                # Past the TTL of the last write a standby may hold it: stop deciding.
                renewed = loop.time() - self._renewed_at < self.ttl_s
            if not renewed:
                log.error("lease %s lost by %s; stopping", self._key, self.holder)
                self._revision = 0
                await on_lost()
                return

    async def abandon(self) -> None:
        """Stop renewing without touching the key: it is someone else's by now (a write
        of ours was fenced off), or it expires by itself."""
        self._revision = 0
        await self._stop_renewing()

    async def _stop_renewing(self) -> None:
        renewer, self._renewer = self._renewer, None
        if renewer is not None and renewer is not asyncio.current_task():
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer

    async def release(self) -> None:
        await self._stop_renewing()
        if self.held:
            self._revision = 0
            try:
                await self._bucket.purge(self._key)
            except Exception as exc:  # it expires by itself
                log.warning("lease %s not released: %s", self._key, exc)
