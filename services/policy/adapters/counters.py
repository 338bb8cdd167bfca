"""Sliding-window counts per client address in KV: accepted messages, unknown recipients.

Each count is one key of POLICY_COUNTERS_BUCKET holding per-slot counts (see
core/window.py), incremented with compare-and-set so that no number of policy
replicas loses an increment. A key's TTL is the window's retention, renewed
at each increment: an address that goes quiet leaves nothing behind.
"""

from __future__ import annotations

from datetime import datetime

from nats.js import JetStreamContext

from libs.common.contract import subjects
from libs.common.runtime.kv import CAS_ATTEMPTS, Bucket, backoff
from services.policy.adapters.stores import readable
from services.policy.core import ContentionError, SlidingCount, Window


class SlidingCounters:
    def __init__(self, js: JetStreamContext, window: Window) -> None:
        self._bucket = Bucket(js, subjects.POLICY_COUNTERS_BUCKET)
        self._window = window

    async def get(self, key: str) -> SlidingCount | None:
        entry = await self._bucket.get(key)
        if entry is None or entry.value is None:
            return None
        return readable(SlidingCount, f"count {key}", entry.value)

    async def add(self, key: str, now: datetime) -> SlidingCount:
        """Count one event now; returns the count including it."""
        for attempt in range(CAS_ATTEMPTS):
            entry = await self._bucket.get(key)
            current = SlidingCount()
            if entry is not None and entry.value is not None:
                current = readable(SlidingCount, f"count {key}", entry.value) or current
            counted = current.add(self._window, now)
            revision = entry.revision if entry is not None and entry.revision else 0
            ttl = self._window.retention.total_seconds()
            if await self._bucket.swap(key, counted.encode(), revision, ttl):
                return counted
            await backoff(attempt)
        raise ContentionError(f"count {key}: {CAS_ATTEMPTS} concurrent writes")

    async def reset(self, key: str) -> None:
        await self._bucket.purge(key)
