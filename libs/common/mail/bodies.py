"""Message bodies as plain JetStream messages on the MAILBUS_BODIES stream.

A body up to CHUNK_SIZE is one message on `mailbus.body.<qid>.h`: storing it is
one publish, reading it one direct get, removing it one purge. nats-py's Object
Store spent a stream look-up and a meta message on every put, and a temporary
consumer on every get (which the server then matched every purge against).

A larger body is cut into chunks: `mailbus.body.<qid>.1` .. `.<n-1>` first, then
the last piece as the head, whose `Mailbus-Body-Chunks` header says how many
there are. The head is written only after every chunk is acknowledged, so a body
whose head can be read is whole, and a failed upload leaves no head.

Bodies carry no Nats-Msg-Id: the stream keeps one message per subject, so a
retried write replaces its first copy instead of being dropped as a duplicate,
which would leave a body purged by a failure path missing for good.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import datetime
from typing import BinaryIO

from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from libs.common.contract import subjects

# Well under nats-server's default max_payload (1 MiB), headers included.
CHUNK_SIZE = 512 * 1024
# Chunks of one upload awaiting their PubAck at once: bounds memory per upload
# (IN_FLIGHT times CHUNK_SIZE) while not paying one round trip per chunk.
IN_FLIGHT = 4
CHUNKS_HEADER = "Mailbus-Body-Chunks"
LIST_TIMEOUT_S = 5.0


def _pieces(body: bytes | BinaryIO, prefix: bytes) -> Iterator[bytes]:
    """The body (after `prefix`) in CHUNK_SIZE pieces; at least one, possibly empty.

    A file is read a piece at a time, so an upload never holds it whole.
    """
    if isinstance(body, bytes | bytearray | memoryview):
        data = prefix + bytes(body)
        yield data[:CHUNK_SIZE]
        for start in range(CHUNK_SIZE, len(data), CHUNK_SIZE):
            yield data[start : start + CHUNK_SIZE]
        return
    pending, yielded = prefix, False
    while True:
        while len(pending) >= CHUNK_SIZE:
            yield pending[:CHUNK_SIZE]
            pending, yielded = pending[CHUNK_SIZE:], True
        more = body.read(CHUNK_SIZE - len(pending))
        if not more:
            break
        pending += more
    if pending or not yielded:
        yield pending


class BodyStore:
    """Put, get and remove bodies by queue id; one handle per process is enough."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def put(self, queue_id: str, body: bytes | BinaryIO, prefix: bytes = b"") -> int:
        """Store `prefix` + `body` and return its size once JetStream has it all."""
        size = 0
        in_flight: list[asyncio.Task[api.PubAck]] = []
        last: bytes | None = None
        index = 0
        try:
            for piece in _pieces(body, prefix):
                if last is not None:
                    index += 1
                    subject = subjects.body_chunk_subject(queue_id, index)
                    in_flight.append(asyncio.ensure_future(self._js.publish(subject, last)))
                    if len(in_flight) >= IN_FLIGHT:
                        await in_flight.pop(0)
                last = piece
                size += len(piece)
            await asyncio.gather(*in_flight)
        finally:
            for task in in_flight:
                task.cancel()
        headers = {CHUNKS_HEADER: str(index + 1)} if index else None
        await self._js.publish(subjects.body_head_subject(queue_id), last or b"", headers=headers)
        return size

    async def get(self, queue_id: str) -> bytes | None:
        """The whole body, or None when there is none (never stored, or removed)."""
        head = await self._read(subjects.body_head_subject(queue_id))
        if head is None:
            return None
        last = head.data or b""
        count = int((head.headers or {}).get(CHUNKS_HEADER, "1"))
        if count <= 1:
            return last
        chunks = await asyncio.gather(
            *(self._read(subjects.body_chunk_subject(queue_id, i)) for i in range(1, count))
        )
        if any(chunk is None for chunk in chunks):
            return None  # removed while being read
        return b"".join([*(c.data or b"" for c in chunks if c is not None), last])

    async def exists(self, queue_id: str) -> bool:
        """Whether the body's head is stored (so the body is whole)."""
        return await self._read(subjects.body_head_subject(queue_id)) is not None

    async def _read(self, subject: str) -> api.RawStreamMsg | None:
        """A direct get, which any replica may answer; on "not found" the leader's word.

        A follower may not have applied a write the client already had acknowledged:
        asking the leader before calling a body missing keeps a just-stored body from
        being taken for a finished message's (whose job would then be dropped).
        """
        try:
            return await self._js.get_last_msg(subjects.BODIES_STREAM, subject, direct=True)
        except NotFoundError:
            pass
        try:
            return await self._js.get_last_msg(subjects.BODIES_STREAM, subject)
        except NotFoundError:
            return None

    async def stored(self) -> list[tuple[str, datetime | None]]:
        """Every body in the stream as (queue id, when its first message was stored),
        whole or not (chunks whose head never came count too). Reads headers only."""
        info = await self._js.stream_info(subjects.BODIES_STREAM)
        if not info.state.messages:
            return []
        first: dict[str, datetime | None] = {}
        sub = await self._js.subscribe(
            subjects.BODIES_SUBJECTS,
            stream=subjects.BODIES_STREAM,
            ordered_consumer=True,
            headers_only=True,
        )
        try:
            while True:
                msg = await sub.next_msg(timeout=LIST_TIMEOUT_S)
                name = msg.subject[len(subjects.BODIES_PREFIX) + 1 :].split(".", 1)[0]
                first.setdefault(name, msg.metadata.timestamp)
                if msg.metadata.num_pending == 0:
                    break
        finally:
            await sub.unsubscribe()
        return list(first.items())

    async def delete(self, queue_id: str) -> None:
        """Remove every message of the body; removing a missing body is no error."""
        await self._js.purge_stream(
            subjects.BODIES_STREAM, subject=subjects.body_subjects(queue_id)
        )
