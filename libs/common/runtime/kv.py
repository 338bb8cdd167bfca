"""Compare-and-set on a KV key with a per-key TTL, the one write grants and counters need.

nats-py's `KeyValue.update` takes no TTL and `create` only works for absent
keys, so this publishes to the bucket's subject itself with the two headers
that make it a KV update: the expected last revision of the key and Nats-TTL
(the bucket streams nats-py creates allow per-message TTLs).
"""

from __future__ import annotations

import asyncio
import random

from nats.js import JetStreamContext, api
from nats.js.errors import APIError, KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

# JSStreamWrongLastSequenceErrF and its constant variant: someone wrote first.
_WRONG_LAST_SEQUENCE = (10071, 10164)
MIN_TTL_S = 1
MARKER_TTL_S = 60.0
# Compare-and-set retries: many writers on one key (a brute force in parallel, a burst
# of messages from one address) each get through within a few rounds of backoff.
CAS_ATTEMPTS = 32
BACKOFF_STEP_S = 0.002


async def backoff(attempt: int) -> None:
    """After a lost compare-and-set: wait a random, growing while, so writers spread out."""
    await asyncio.sleep(random.uniform(0, BACKOFF_STEP_S * (attempt + 1)))


class Bucket:
    def __init__(self, js: JetStreamContext, name: str) -> None:
        self._js = js
        self.name = name
        self._kv: KeyValue | None = None

    async def _bucket(self) -> KeyValue:
        if self._kv is None:
            self._kv = await self._js.key_value(self.name)
        return self._kv

    async def get(self, key: str) -> KeyValue.Entry | None:
        kv = await self._bucket()
        try:
            return await kv.get(key)
        except KeyNotFoundError:
            return None

    async def purge(self, key: str, marker_ttl_s: float = MARKER_TTL_S) -> None:
        """Remove the key; the purge marker itself expires, so none piles up."""
        kv = await self._bucket()
        await kv.purge(key, msg_ttl=max(MIN_TTL_S, marker_ttl_s))

    async def keys(self) -> list[str]:
        """Keys with a message (live values and not yet expired purge markers).

        One stream-info request instead of a consumer per listing.
        """
        prefix = f"$KV.{self.name}."
        info = await self._js.stream_info(f"KV_{self.name}", subjects_filter=f"{prefix}>")
        return sorted(subject[len(prefix) :] for subject in (info.state.subjects or {}))

    async def swap(self, key: str, value: bytes, last_revision: int, ttl_s: float) -> int | None:
        """Write if the key is still at `last_revision` (0: absent); the new revision,
        or None when someone else wrote first."""
        headers = {api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(last_revision)}
        try:
            ack = await self._js.publish(
                f"$KV.{self.name}.{key}",
                value,
                headers=headers,
                msg_ttl=max(MIN_TTL_S, ttl_s),
            )
        except APIError as exc:
            if exc.err_code in _WRONG_LAST_SEQUENCE:
                return None
            raise
        return int(ack.seq)

    async def last_revision(self, key: str) -> int:
        """The sequence of the key's last message of any kind (a value or a purge or
        delete marker), 0 when it has none: what a compare-and-set must expect."""
        try:
            msg = await self._js.get_last_msg(f"KV_{self.name}", f"$KV.{self.name}.{key}")
        except NotFoundError:
            return 0
        return int(msg.seq or 0)

    async def last_value_revision(self, key: str) -> tuple[int, bool]:
        """`last_revision` and whether that message is a live value (not a delete or
        purge marker), both from the stream's leader: a direct get may be answered by
        a replica still catching up, and must not make a live key look absent."""
        try:
            msg = await self._js.get_last_msg(f"KV_{self.name}", f"$KV.{self.name}.{key}")
        except NotFoundError:
            return 0, False
        operation = (msg.headers or {}).get("KV-Operation", "")
        return int(msg.seq or 0), operation not in ("DEL", "PURGE")
