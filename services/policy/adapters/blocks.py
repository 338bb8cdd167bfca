"""Blocks in KV (what every replica checks) and as events (the history operators read).

The live block is the key `token(address)` of BLOCKS_BUCKET, written with
compare-and-set so that two replicas reaching the limit together make one
block, and expiring a minute after the block ends (the core decides with its
own clock; the TTL only cleans up). Each block made or lifted is also an
event on MAILBUS_ACCESS (ClientBlocked, ClientUnblocked) with a deterministic
id, so a retried publish is deduplicated.

Checks (at connect and at MAIL) read a copy in memory that a KV watch keeps
current, instead of one KV get each: a block another replica makes reaches
this one's copy within a message's flight. Until the watch has caught up, and
whenever it has failed, a check reads the bucket as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from nats.js import JetStreamContext

from libs.common.contract import subjects
from libs.common.contract.events import ClientBlocked, ClientUnblocked, event_type
from libs.common.mail import maillines
from libs.common.runtime import bus, maillog
from libs.common.runtime.kv import CAS_ATTEMPTS, Bucket, backoff
from services.policy.adapters.stores import readable
from services.policy.core import Block, ContentionError
from services.policy.core.blocks import unblock_event_id

log = logging.getLogger(__name__)

BLOCK_TTL_MARGIN = timedelta(seconds=60)
# Past this many keys in the copy, blocks that have ended are dropped from it (the
# KV TTL removes them from the bucket without a message to the watch).
COPY_PRUNE_AT = 1_000
CLOSE_WAIT_S = 2.0


class BlockStore:
    def __init__(self, js: JetStreamContext) -> None:
        self._js = js
        self._bucket = Bucket(js, subjects.BLOCKS_BUCKET)
        self._copy: dict[str, Block] | None = None  # by key, once the watch caught up
        self._watch: asyncio.Task[None] | None = None

    async def get(self, client_ip: str) -> Block | None:
        key = subjects.token(client_ip)
        if self._copy is not None:
            return self._copy.get(key)
        if self._watch is None:
            self._watch = asyncio.create_task(self._follow(), name="policy-blocks-watch")
        entry = await self._bucket.get(key)
        if entry is None or entry.value is None:
            return None
        return readable(Block, f"block {client_ip}", entry.value)

    @property
    def from_copy(self) -> bool:
        """Whether checks are answered from the watched copy (no request each)."""
        return self._copy is not None

    async def close(self) -> None:
        """Stop the watch; bounded, so a stuck unsubscribe never holds up a shutdown."""
        watch, self._watch, self._copy = self._watch, None, None
        if watch is not None:
            watch.cancel()
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(asyncio.shield(watch), CLOSE_WAIT_S)

    async def _follow(self) -> None:
        copy: dict[str, Block] = {}
        try:
            kv = await self._js.key_value(subjects.BLOCKS_BUCKET)
            watcher = await kv.watchall()
            try:
                async for entry in watcher:
                    if entry is None:  # caught up with the bucket: from now on, answer
                        self._copy = copy
                        continue
                    block = None
                    if entry.operation is None and entry.value:
                        block = readable(Block, f"block {entry.key}", entry.value)
                    self._keep(copy, entry.key, block)
            finally:
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(
                        watcher.stop(),  # type: ignore[no-untyped-call]  # nats-py: untyped
                        CLOSE_WAIT_S,
                    )
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning(
                "blocks watch stopped (%s: %s); reading the bucket", type(exc).__name__, exc
            )
        finally:
            # The next check reads the bucket and starts a new watch (unless closed).
            if self._watch is asyncio.current_task():
                self._copy = None
                self._watch = None

    def _keep(self, copy: dict[str, Block], key: str, block: Block | None) -> None:
        if block is None:
            copy.pop(key, None)
        else:
            copy[key] = block
        if len(copy) > COPY_PRUNE_AT:
            now = datetime.now(UTC)
            for stale in [k for k, b in copy.items() if b.end <= now]:
                del copy[stale]

    async def impose(self, block: Block, now: datetime) -> tuple[Block, bool]:
        """Store the block unless one is active already; (the block in force, made now?)."""
        key = subjects.token(block.client_ip)
        ttl = (block.end + BLOCK_TTL_MARGIN - now).total_seconds()
        for attempt in range(CAS_ATTEMPTS):
            entry = await self._bucket.get(key)
            current = None
            if entry is not None and entry.value is not None:
                current = readable(Block, f"block {block.client_ip}", entry.value)
            if current is not None and current.active_at(now):
                return current, False
            revision = entry.revision if entry is not None and entry.revision else 0
            if await self._bucket.swap(key, block.encode(), revision, ttl):
                if self._copy is not None:  # in force here at once, not when the watch says
                    self._keep(self._copy, key, block)
                maillog.emit(
                    maillines.blocked(block.client_ip, block.reason, block.rule, block.end)
                )
                await self._publish_blocked(block)
                return block, True
            await backoff(attempt)
        raise ContentionError(f"block of {block.client_ip}: {CAS_ATTEMPTS} concurrent writes")

    async def lift(self, client_ip: str, now: datetime, operator: str) -> Block | None:
        """Remove the block of an address; returns it (None when there was none)."""
        current = await self.get(client_ip)
        await self._bucket.purge(subjects.token(client_ip))
        if self._copy is not None:
            self._keep(self._copy, subjects.token(client_ip), None)
        active = current if current is not None and current.active_at(now) else None
        start = active.start if active is not None else now
        event = ClientUnblocked(
            event_id=unblock_event_id(client_ip, start),
            occurred_at=now,
            client_ip=client_ip,
            block_start=active.start if active is not None else None,
            operator=operator,
        )
        await bus.publish_model(
            self._js, subjects.access_subject(event_type(event)), event, msg_id=event.event_id
        )
        return active

    async def active(self, now: datetime) -> list[Block]:
        found: list[Block] = []
        for key in await self._bucket.keys():
            entry = await self._bucket.get(key)
            if entry is None or entry.value is None:
                continue  # a purge marker
            block = readable(Block, f"block {key}", entry.value)
            if block is not None and block.active_at(now):
                found.append(block)
        return sorted(found, key=lambda b: (b.start, b.client_ip))

    async def _publish_blocked(self, block: Block) -> None:
        event = ClientBlocked(
            event_id=block.event_id,
            occurred_at=block.start,
            client_ip=block.client_ip,
            reason=block.reason,
            rule=block.rule,
            start=block.start,
            end=block.end,
        )
        try:
            await bus.publish_model(
                self._js, subjects.access_subject(event_type(event)), event, msg_id=event.event_id
            )
        except Exception as exc:
            # The block is in force (the KV write succeeded); only its history entry is missing.
            log.error("block of %s not recorded as an event: %s", block.client_ip, exc)
