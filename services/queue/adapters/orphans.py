"""Sweeping orphan bodies (services/queue/core/orphans.py) while this replica owns partition 0.

The sweeper sees the body store through `BodyStore` (list with store times, delete);
`StreamBodies` is that view of the MAILBUS_BODIES stream. A body is an orphan when it
is older than the grace period and MAILBUS_EVENTS has no event of its queue id (of
either subject shape: a body of a message queued before partitions is no orphan);
each one removed is counted in `mailbus_qmgr_orphan_bodies_removed_total`.

Environment (tests shorten them): MAILBUS_ORPHAN_SWEEP_EVERY and MAILBUS_ORPHAN_GRACE,
in seconds (defaults 600 and 3600).
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from libs.common.config import ConfigError
from libs.common.contract import subjects
from libs.common.mail import bodies
from libs.common.runtime.metrics import QUEUE_ORPHAN_BODIES
from services.queue.core.orphans import StoredBody, old_enough

log = logging.getLogger(__name__)

EVERY_ENV = "MAILBUS_ORPHAN_SWEEP_EVERY"
GRACE_ENV = "MAILBUS_ORPHAN_GRACE"
DEFAULT_EVERY_S = 600.0
DEFAULT_GRACE_S = 3600.0


class BodyStore(Protocol):
    async def stored(self) -> list[StoredBody]: ...

    async def delete(self, name: str) -> None: ...


class StreamBodies:
    """The bodies on the MAILBUS_BODIES stream (libs/common/mail/bodies.py)."""

    def __init__(self, store: bodies.BodyStore) -> None:
        self._store = store

    async def stored(self) -> list[StoredBody]:
        return [StoredBody(name, at) for name, at in await self._store.stored()]

    async def delete(self, name: str) -> None:
        await self._store.delete(name)  # a body gone meanwhile is no error


@dataclass(frozen=True)
class SweepSettings:
    every_s: float = DEFAULT_EVERY_S
    grace: timedelta = timedelta(seconds=DEFAULT_GRACE_S)

    @classmethod
    def from_env(cls) -> SweepSettings:
        return cls(
            _seconds(EVERY_ENV, DEFAULT_EVERY_S),
            timedelta(seconds=_seconds(GRACE_ENV, DEFAULT_GRACE_S)),
        )


def _seconds(name: str, default: float) -> float:
    text = os.environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise ConfigError([f"{name}: {text!r} is not a number of seconds"]) from None
    if value <= 0:
        raise ConfigError([f"{name}: must be positive, not {value:g}"])
    return value


class OrphanSweeper:
    def __init__(self, js: JetStreamContext, bodies: BodyStore, settings: SweepSettings) -> None:
        self._js = js
        self._bodies = bodies
        self._settings = settings

    async def sweep(self) -> int:
        """Remove the orphans found now; how many."""
        candidates = old_enough(
            await self._bodies.stored(), datetime.now(UTC), self._settings.grace
        )
        removed = 0
        for name in candidates:
            if await self._referenced(name):
                continue
            await self._bodies.delete(name)
            removed += 1
            QUEUE_ORPHAN_BODIES.inc()
            log.warning("queue %s: orphan body removed (no MessageReceived refers to it)", name)
        return removed

    async def _referenced(self, queue_id: str) -> bool:
        # Its first event, whichever shape: one "next message on this filter" get.
        subject = subjects.message_events_filter(queue_id)
        try:
            await self._js.get_msg(subjects.EVENTS_STREAM, seq=1, subject=subject, next=True)
        except NotFoundError:
            return False
        return True

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                async with asyncio.timeout(self._settings.every_s):
                    await stopping.wait()
                return
            except TimeoutError:
                pass
            try:
                await self.sweep()
            except Exception as exc:  # NATS away: the next round tries again
                log.warning("queue: orphan sweep failed: %s: %s", type(exc).__name__, exc)
