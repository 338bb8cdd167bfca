"""Message bodies on the MAILBUS_BODIES stream, on a real nats-server."""

from __future__ import annotations

import io
import os

from nats.js import JetStreamContext

from libs.common.contract import subjects
from libs.common.mail import bodies
from libs.common.mail.bodies import BodyStore


async def _messages(js: JetStreamContext) -> int:
    info = await js.stream_info(subjects.BODIES_STREAM)
    return info.state.messages


async def test_a_small_body_is_one_message(js: JetStreamContext) -> None:
    store = BodyStore(js)
    size = await store.put("Q1", b"Subject: x\r\n\r\nhello\r\n", prefix=b"Received: by x\r\n")
    assert await store.get("Q1") == b"Received: by x\r\nSubject: x\r\n\r\nhello\r\n"
    assert size == len(b"Received: by x\r\nSubject: x\r\n\r\nhello\r\n")
    assert await _messages(js) == 1


async def test_a_large_body_is_chunked_from_bytes_and_from_a_file(js: JetStreamContext) -> None:
    store = BodyStore(js)
    body = os.urandom(bodies.CHUNK_SIZE * 5 + 123)
    prefix = b"Received: from somewhere\r\n"
    await store.put("Q1", body, prefix=prefix)
    await store.put("Q2", io.BytesIO(body), prefix=prefix)
    assert await store.get("Q1") == prefix + body
    assert await store.get("Q2") == prefix + body
    assert await _messages(js) == 2 * 6


async def test_a_file_of_whole_chunks_makes_no_empty_head(js: JetStreamContext) -> None:
    store = BodyStore(js)
    body = os.urandom(bodies.CHUNK_SIZE * 2)
    await store.put("Q1", io.BytesIO(body))
    assert await store.get("Q1") == body
    assert await _messages(js) == 2


async def test_an_empty_body_is_stored_and_read_back_empty(js: JetStreamContext) -> None:
    store = BodyStore(js)
    await store.put("Q1", io.BytesIO(b""))
    assert await store.get("Q1") == b""


async def test_a_missing_body_is_none_and_deleting_it_is_harmless(js: JetStreamContext) -> None:
    store = BodyStore(js)
    assert await store.get("NOPE") is None
    await store.delete("NOPE")


async def test_delete_removes_every_chunk_of_one_body_only(js: JetStreamContext) -> None:
    store = BodyStore(js)
    await store.put("Q1", os.urandom(bodies.CHUNK_SIZE * 3))
    await store.put("Q2", b"other")
    await store.delete("Q1")
    assert await store.get("Q1") is None
    assert await store.get("Q2") == b"other"
    assert await _messages(js) == 1


async def test_chunks_without_their_head_are_no_body(js: JetStreamContext) -> None:
    # What an upload that failed before its head leaves: nothing a reader takes as a body.
    await js.publish(subjects.body_chunk_subject("Q1", 1), b"partial")
    assert await BodyStore(js).get("Q1") is None


async def test_writing_a_body_again_replaces_it(js: JetStreamContext) -> None:
    store = BodyStore(js)
    await store.put("Q1", b"first")
    await store.put("Q1", b"second")
    assert await store.get("Q1") == b"second"
    assert await _messages(js) == 1


async def test_stored_lists_every_body_with_its_time_headless_chunks_too(
    js: JetStreamContext,
) -> None:
    store = BodyStore(js)
    assert await store.stored() == []
    await store.put("Q1", b"whole")
    await store.put("Q2", os.urandom(bodies.CHUNK_SIZE + 1))
    await js.publish(subjects.body_chunk_subject("Q3", 1), b"an upload that stopped")
    listed = dict(await store.stored())
    assert sorted(listed) == ["Q1", "Q2", "Q3"]
    assert all(at is not None for at in listed.values())
