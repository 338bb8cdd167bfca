"""The topology is created idempotently on a real nats-server and events round-trip."""

from __future__ import annotations

from nats.js import JetStreamContext

from libs.common.contract import subjects
from libs.common.contract.events import Client, MessageReceived, Recipient, parse_event
from libs.common.runtime import bus


async def test_topology_is_idempotent(js: JetStreamContext) -> None:
    await bus.ensure_topology(js)  # a second time, as every service does at start
    names = {s.config.name for s in await js.streams_info()}
    assert {subjects.EVENTS_STREAM, subjects.JOBS_STREAM, subjects.TIMERS_STREAM} <= names
    info = await js.stream_info(subjects.JOBS_STREAM)
    assert info.config.retention == "workqueue"


async def test_event_publish_dedups_by_event_id(js: JetStreamContext) -> None:
    event = MessageReceived(
        event_id="Q1.received",
        queue_id="Q1",
        mail_from="a@example.test",
        recipients=(Recipient(address="b@example.test"),),
        size=10,
        client=Client(ip="127.0.0.1"),
    )
    first = await bus.publish_event(js, event)
    second = await bus.publish_event(js, event)
    assert second.duplicate and not first.duplicate
    sub = await js.subscribe(subjects.message_events_filter("Q1"), ordered_consumer=True)
    msg = await sub.next_msg(timeout=2)
    assert parse_event(msg.data) == event
    assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == "Q1.received"
