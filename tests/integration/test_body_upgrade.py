"""Upgrade: bodies left in the old object store by an earlier version are delivered.

Before the MAILBUS_BODIES stream a body was an object named by its queue id in the
nats-py Object Store bucket `mailbus-bodies`. The test stores bodies there with
nats-py as that version did and publishes the message's MessageReceived, runs
`mailbus migrate`, and then starts queue and delivery of this version.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError

from libs.common.config import load_config_text
from libs.common.contract.events import Client, MessageReceived, Recipient
from libs.common.mail.bodies import CHUNK_SIZE, BodyStore
from libs.common.runtime import bus
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import Running
from libs.common.runtime.topology_bodies import OLD_BUCKET
from tests.support import queue
from tests.support.cli import mailbus
from tests.support.queue import BODY, not_, start_delivery, start_queue
from tests.support.sink import Sink
from tests.support.streams import body_exists, completed, eventually

services = queue.services  # a shared fixture

# Larger than one chunk of the stream, so the copy is chunked too.
BIG = b"Subject: big\r\n\r\n" + b"x" * 77 + b"\r\n" * (CHUNK_SIZE // 40)


async def _queued_before_upgrade(js: JetStreamContext, qid: str, size: int) -> None:
    """Only the event: its body is in the old store, as the old ingress left it."""
    event = MessageReceived(
        event_id=f"{qid}.received",
        queue_id=qid,
        mail_from="alice@example.test",
        recipients=(Recipient(address=f"{qid.lower()}@remote.test"),),
        size=size,
        client=Client(ip="127.0.0.1"),
    )
    await bus.publish_event(js, event)


async def test_a_body_in_the_old_object_store_is_delivered_after_migrate(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
) -> None:
    old = await js.create_object_store(OLD_BUCKET)
    await old.put("QOLD", BODY)
    await old.put("QBIG", BIG)
    await old.put("QGONE", b"deleted before the upgrade")
    await old.delete("QGONE")
    # Already in the stream (a run of migrate cut short): its stream copy is kept.
    await old.put("QHALF", b"the old copy")
    await BodyStore(js).put("QHALF", b"the stream copy")
    await _queued_before_upgrade(js, "QOLD", len(BODY))
    await _queued_before_upgrade(js, "QBIG", len(BIG))

    rc, out, _ = await mailbus("migrate", "--check", "--nats-url", nats_server.url)
    assert rc == 1 and f"{OLD_BUCKET}: old object store" in out
    rc, out, err = await mailbus("migrate", "--nats-url", nats_server.url)
    assert rc == 0, err
    assert f"migrated {OLD_BUCKET}: 2 bodies copied into MAILBUS_BODIES (1 already there)" in out
    with pytest.raises(BucketNotFoundError):
        await js.object_store(OLD_BUCKET)
    assert await BodyStore(js).get("QHALF") == b"the stream copy"
    assert await BodyStore(js).get("QGONE") is None

    # Again: nothing left to move, nothing to report.
    rc, out, err = await mailbus("migrate", "--nats-url", nats_server.url)
    assert rc == 0, err
    assert OLD_BUCKET not in out
    rc, out, _ = await mailbus("migrate", "--check", "--nats-url", nats_server.url)
    assert rc == 0 and out == ""

    sink, port = sink_factory()
    config = load_config_text(
        "server: {hostname: mx.example.test, local_domains: [example.test]}\n"
        f"delivery: {{mode: relay, relay_host: {{host: 127.0.0.1, port: {port}}}}}\n"
    )
    services.append(await start_queue(config, nats_server))
    services.append(await start_delivery(config, nats_server))
    for qid in ("QOLD", "QBIG"):

        async def done(q: str = qid) -> bool:
            return await completed(js, q)

        async def body_gone(q: str = qid) -> bool:
            return await not_(body_exists(js, q))

        await eventually(done, f"{qid} completed")
        await eventually(body_gone, f"{qid} body deleted")
    assert sorted(sink.received) == sorted(
        [
            ("alice@example.test", ["qold@remote.test"], BODY),
            ("alice@example.test", ["qbig@remote.test"], BIG),
        ]
    )
