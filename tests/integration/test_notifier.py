"""The notifier on a real nats-server: triggers in, reports submitted as new messages.

The test plays the queue: it stores a body and its MessageReceived, publishes a
trigger (RecipientsFailed, MessageDelayed, ...) as the queue does, and watches
the event log and the bodies stream for the report and the ReportSent answer.
"""

from __future__ import annotations

import asyncio
import email
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from email import policy
from email.message import EmailMessage, Message
from typing import Literal

import pytest
from flufl.bounce import all_failures
from nats.js import JetStreamContext
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.common.config import load_config_text
from libs.common.contract import subjects
from libs.common.contract.events import (
    Client,
    Event,
    MessageDelayed,
    MessageReceived,
    Recipient,
    RecipientOutcome,
    RecipientsDelivered,
    RecipientsFailed,
    ReportSent,
    encode,
)
from libs.common.contract.ids import new_queue_id
from libs.common.mail.bodies import BodyStore
from libs.common.mail.history import message_history, message_received
from libs.common.mail.submission import MessageStore
from libs.common.runtime import bus
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import Running, start_service
from libs.common.runtime.telemetry import setup_telemetry, tracer
from services.delivery.service import DeliveryService
from services.notifier.adapters.catalogs import load_catalogs
from services.notifier.adapters.processor import NotifierProcessor
from services.notifier.core import trigger_of
from services.notifier.service import NotifierService
from services.queue.service import QueueService
from tests.support.sink import Sink
from tests.support.streams import completed, event_consumers_idle, eventually

HOST = "mx.example.test"
POSTMASTER = "postmaster@mx.example.test"
SENDER = "alice@example.test"
NULL_SENDER = "<>"
BODY = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@remote.test\r\n"
    b"Subject: figures\r\n"
    b"Message-ID: <m1@example.test>\r\n"
    b"\r\n"
    b"Hello Bob.\r\n"
)

Start = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_notifier(nats_server: EmbeddedNats) -> AsyncIterator[Start]:
    running: list[Running] = []

    async def start(language: str = "en") -> Running:
        config = load_config_text(
            f"server:\n  hostname: {HOST}\nqueue:\n  report_language: {language}\n"
        )
        service = await start_service("notifier", NotifierService, config, [nats_server.url])
        running.append(service)
        return service

    yield start
    for service in running:
        await service.close()


async def submit(
    js: JetStreamContext,
    *recipients: Recipient,
    mail_from: str = SENDER,
    body: bytes = BODY,
    report_of: str | None = None,
) -> str:
    qid = new_queue_id()
    await MessageStore(js).accept(
        body,
        MessageReceived(
            event_id=f"{qid}.received",
            queue_id=qid,
            mail_from=mail_from,
            recipients=recipients or (Recipient(address="bob@remote.test"),),
            size=len(body),
            client=Client(ip="192.0.2.1"),
            envid="ENV-1",
            report_of=report_of,
        ),
    )
    return qid


def outcome(
    address: str,
    action: Literal["failed", "delayed", "delivered", "relayed"] = "failed",
    status: str = "5.1.1",
) -> RecipientOutcome:
    return RecipientOutcome(
        address=address,
        action=action,
        status=status,
        remote_host="mx.remote.test",
        diagnostic=f"550 {status} No such user" if action == "failed" else "",
        last_attempt_at=datetime.now(UTC),
    )


def failure(qid: str, *addresses: str, attempt: int = 1) -> RecipientsFailed:
    return RecipientsFailed(
        event_id=f"{qid}.a{attempt}.failed",
        queue_id=qid,
        attempt=attempt,
        outcomes=tuple(outcome(a) for a in addresses or ("bob@remote.test",)),
    )


async def report_sent(js: JetStreamContext, qid: str) -> list[ReportSent]:
    return [e for e in await message_history(js, qid) if isinstance(e, ReportSent)]


async def answered(js: JetStreamContext, qid: str, count: int = 1) -> list[ReportSent]:
    async def check() -> bool:
        return len(await report_sent(js, qid)) >= count

    await eventually(check, f"{count} ReportSent for {qid}")
    return await report_sent(js, qid)


async def reports_in_stream(js: JetStreamContext) -> list[MessageReceived]:
    """Every MessageReceived with report_of set: the reports the notifier submitted."""
    info = await js.stream_info(subjects.EVENTS_STREAM)
    found: list[MessageReceived] = []
    seq = 1
    for _ in range(info.state.messages + 1):
        try:
            raw = await js.get_msg(
                subjects.EVENTS_STREAM,
                seq=seq,
                subject=subjects.events_of_type("MessageReceived"),
                next=True,
            )
        except Exception:
            break
        assert raw.seq is not None
        event = MessageReceived.model_validate_json(raw.data or b"")
        if event.report_of is not None:
            found.append(event)
        seq = raw.seq + 1
    return found


async def body_of(js: JetStreamContext, qid: str) -> bytes:
    body = await BodyStore(js).get(qid)
    assert body is not None
    return body


def parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


# --- tests ------------------------------------------------------------------------------


async def test_failure_report_is_submitted_once(
    js: JetStreamContext, start_notifier: Start
) -> None:
    await start_notifier()
    qid = await submit(js, Recipient(address="bob@remote.test", orcpt="rfc822;bob@remote.test"))
    trigger = failure(qid)
    await bus.publish_event(js, trigger)

    (sent,) = await answered(js, qid)
    assert sent.event_id == f"{trigger.event_id}.report"
    assert sent.trigger_event_id == trigger.event_id and sent.kind == "failure"
    assert sent.report_queue_id is not None and "." not in sent.report_queue_id

    report = await message_received(js, sent.report_queue_id)
    assert report is not None
    assert report.mail_from == "" and report.report_of == qid
    assert [r.address for r in report.recipients] == [SENDER]
    raw = await body_of(js, sent.report_queue_id)
    assert report.size == len(raw)
    parsed = parse(raw)
    assert parsed.get_content_type() == "multipart/report"
    assert [p.get_content_type() for p in parsed.iter_parts()] == [
        "text/plain",
        "message/delivery-status",
        "message/rfc822",
    ]
    assert parsed["To"] == SENDER and parsed["Auto-Submitted"] == "auto-replied"
    assert parsed["Subject"] == "Undelivered mail: figures"
    assert all_failures(email.message_from_bytes(raw)) == (
        frozenset(),
        frozenset({b"bob@remote.test"}),
    )
    assert [r.report_of for r in await reports_in_stream(js)] == [qid]


async def test_duplicate_trigger_makes_no_second_report(
    js: JetStreamContext, start_notifier: Start
) -> None:
    qid = await submit(js)
    trigger = failure(qid)
    # The same trigger twice in the stream (as after a lost PubAck and a retry that
    # outlived the duplicate window), and a redelivery of one of them.
    for msg_id in (trigger.event_id, f"{trigger.event_id}-again"):
        await js.publish(
            subjects.event_subject(qid, "RecipientsFailed"),
            encode(trigger),
            headers={"Nats-Msg-Id": msg_id},
        )
    await start_notifier()
    (sent,) = await answered(js, qid)
    assert sent.report_queue_id is not None

    async def consumer_idle() -> bool:
        info = await js.consumer_info(subjects.EVENTS_STREAM, subjects.NOTIFIER_CONSUMER)
        return bool(info.num_pending == 0 and info.num_ack_pending == 0)

    await eventually(consumer_idle, "both triggers settled")
    assert len(await report_sent(js, qid)) == 1
    assert len(await reports_in_stream(js)) == 1


async def test_existing_report_is_not_submitted_again(
    js: JetStreamContext, start_notifier: Start
) -> None:
    """A crash after the report was submitted but before ReportSent was published."""
    qid = await submit(js)
    trigger = failure(qid)
    received = await message_received(js, qid)
    assert received is not None
    # What the crashed process got done: the report, without the answer.
    processor = NotifierProcessor(js, load_catalogs(), HOST, POSTMASTER, "en")
    core_trigger = trigger_of(trigger)
    assert core_trigger is not None
    report_id = await processor.make_report(core_trigger, received)
    assert report_id is not None
    head = subjects.body_head_subject(report_id)
    before = await js.get_last_msg(subjects.BODIES_STREAM, head, direct=True)

    await bus.publish_event(js, trigger)
    await start_notifier()
    (sent,) = await answered(js, qid)
    assert sent.report_queue_id == report_id
    after = await js.get_last_msg(subjects.BODIES_STREAM, head, direct=True)
    assert after.seq == before.seq, "the report's body was written again"
    assert len(await reports_in_stream(js)) == 1


@pytest.mark.parametrize(
    ("mail_from", "notify"),
    [("", ()), (SENDER, ("NEVER",)), (SENDER, ("SUCCESS",))],
    ids=["null-sender", "notify-never", "notify-success-only"],
)
async def test_no_report_due_still_answers(
    js: JetStreamContext, start_notifier: Start, mail_from: str, notify: tuple[str, ...]
) -> None:
    await start_notifier()
    qid = await submit(js, Recipient(address="bob@remote.test", notify=notify), mail_from=mail_from)
    await bus.publish_event(js, failure(qid))
    (sent,) = await answered(js, qid)
    assert sent.report_queue_id is None and sent.kind == "failure"
    assert await reports_in_stream(js) == []


async def test_failed_report_reaches_postmaster_once(
    js: JetStreamContext, start_notifier: Start
) -> None:
    await start_notifier()
    qid = await submit(js)
    await bus.publish_event(js, failure(qid))
    (first,) = await answered(js, qid)
    report_id = first.report_queue_id
    assert report_id is not None

    # The report bounces: the queue would emit this for it.
    await bus.publish_event(js, failure(report_id, SENDER))
    (second,) = await answered(js, report_id)
    to_postmaster = second.report_queue_id
    assert to_postmaster is not None
    event = await message_received(js, to_postmaster)
    assert event is not None and event.mail_from == "" and event.report_of == report_id
    assert [r.address for r in event.recipients] == [POSTMASTER]
    parsed = parse(await body_of(js, to_postmaster))
    assert parsed["To"] == POSTMASTER

    # The report to the postmaster bounces too: dropped, nothing further.
    await bus.publish_event(js, failure(to_postmaster, POSTMASTER))
    (third,) = await answered(js, to_postmaster)
    assert third.report_queue_id is None
    assert [r.report_of for r in await reports_in_stream(js)] == [qid, report_id]


async def test_delay_report_in_the_configured_language(
    js: JetStreamContext, start_notifier: Start
) -> None:
    await start_notifier(language="cs")
    qid = await submit(js, Recipient(address="bob@remote.test"), Recipient(address="c@remote.test"))
    until = datetime.now(UTC) + timedelta(days=5)
    await bus.publish_event(
        js,
        MessageDelayed(
            event_id=f"{qid}.delayed",
            queue_id=qid,
            recipients=("bob@remote.test", "c@remote.test"),
            outcomes=(
                outcome("bob@remote.test", "delayed", "4.4.1"),
                outcome("c@remote.test", "delayed", "4.2.2"),
            ),
            will_retry_until=until,
        ),
    )
    (sent,) = await answered(js, qid)
    assert sent.kind == "delay" and sent.report_queue_id is not None
    raw = await body_of(js, sent.report_queue_id)
    parsed = parse(raw)
    assert parsed["Subject"] == "Zpožděná zpráva (doručování pokračuje): figures"
    parts = list(parsed.iter_parts())
    assert parts[2].get_content_type() == "text/rfc822-headers"
    assert b"Will-Retry-Until: " in raw
    temporary, permanent = all_failures(email.message_from_bytes(raw))
    assert temporary == {b"bob@remote.test", b"c@remote.test"} and not permanent


async def test_success_report_when_asked(js: JetStreamContext, start_notifier: Start) -> None:
    await start_notifier()
    qid = await submit(js, Recipient(address="bob@remote.test", notify=("SUCCESS",)))
    await bus.publish_event(
        js,
        RecipientsDelivered(
            event_id=f"{qid}.a1.delivered",
            queue_id=qid,
            attempt=1,
            outcomes=(outcome("bob@remote.test", "relayed", "2.0.0"),),
        ),
    )
    (sent,) = await answered(js, qid)
    assert sent.kind == "success" and sent.report_queue_id is not None
    parsed = parse(await body_of(js, sent.report_queue_id))
    assert parsed["Subject"] == "Message delivered: figures"
    blocks = list(parsed.iter_parts())[1].get_payload()
    assert isinstance(blocks, list) and isinstance(blocks[1], Message)
    assert blocks[1]["Action"] == "relayed"


async def test_report_continues_the_triggers_trace(
    js: JetStreamContext, start_notifier: Start
) -> None:
    spans = InMemorySpanExporter()
    setup_telemetry("test", processor=SimpleSpanProcessor(spans))
    await start_notifier()
    qid = await submit(js)
    with tracer("test").start_as_current_span("queue emits RecipientsFailed") as span:
        trace_id = f"{span.get_span_context().trace_id:032x}"
        await _publish(js, failure(qid))
    (sent,) = await answered(js, qid)
    assert sent.report_queue_id is not None
    report = await message_received(js, sent.report_queue_id)
    assert report is not None and report.trace_parent is not None
    assert report.trace_parent.split("-")[1] == trace_id


async def _publish(js: JetStreamContext, event: Event) -> None:
    await bus.publish_event(js, event)


# --- end to end: queue and delivery emit, the report travels like any message -----------


async def test_end_to_end_failure_report_reaches_the_sender(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
) -> None:
    sink, port = sink_factory(replies={"bob@remote.test": "550 5.1.1 No such user here"})
    config = load_config_text(
        f"server:\n  hostname: {HOST}\n"
        f"delivery:\n  mode: relay\n  relay_host:\n    host: 127.0.0.1\n    port: {port}\n"
        "  tls: none\n"
    )
    running = [
        await start_service(name, factory, config, [nats_server.url])
        for name, factory in (
            ("queue", QueueService),
            ("delivery", DeliveryService),
            ("notifier", NotifierService),
        )
    ]
    try:
        qid = await submit(
            js, Recipient(address="bob@remote.test"), Recipient(address="carol@remote.test")
        )

        async def report_arrived() -> bool:
            # aiosmtpd records MAIL FROM:<> as "<>".
            return any(mail_from == NULL_SENDER for mail_from, _, _ in sink.received)

        await eventually(report_arrived, "the report at the sender's sink", within=60)
        (report,) = [m for m in sink.received if m[0] == NULL_SENDER]
        _, rcpts, content = report
        assert rcpts == [SENDER]
        parsed = parse(content)
        assert parsed["Subject"] == "Undelivered mail: figures"
        assert parsed["Auto-Submitted"] == "auto-replied"
        # The queue kept the body until the notifier answered: the original is attached.
        assert [p.get_content_type() for p in parsed.iter_parts()][2] == "message/rfc822"
        assert all_failures(email.message_from_bytes(content)) == (
            frozenset(),
            frozenset({b"bob@remote.test"}),
        )
        assert "550 5.1.1 No such user here" in " ".join(
            next(iter(parsed.iter_parts())).get_content().split()
        )
        # The original reached carol; nobody else got anything.
        assert sorted((m[0], tuple(m[1])) for m in sink.received) == [
            (NULL_SENDER, (SENDER,)),
            (SENDER, ("carol@remote.test",)),
        ]
        (sent,) = await answered(js, qid)
        assert sent.kind == "failure"
    finally:
        for service in reversed(running):
            await service.close()


async def test_end_to_end_a_bounced_report_reaches_the_postmaster_once(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
) -> None:
    """The original bounces, and so does its report: the postmaster hears of it once."""
    refused = "550 5.1.1 No such user here"
    sink, port = sink_factory(replies={"bob@remote.test": refused, SENDER: refused})
    config = load_config_text(
        f"server:\n  hostname: {HOST}\n  postmaster: {POSTMASTER}\n"
        f"delivery:\n  mode: relay\n  relay_host:\n    host: 127.0.0.1\n    port: {port}\n"
        "  tls: none\n"
    )
    running = [
        await start_service(name, factory, config, [nats_server.url])
        for name, factory in (
            ("queue", QueueService),
            ("delivery", DeliveryService),
            ("notifier", NotifierService),
        )
    ]
    try:
        qid = await submit(js, Recipient(address="bob@remote.test"))

        async def postmaster_told() -> bool:
            return any(rcpts == [POSTMASTER] for _, rcpts, _ in sink.received)

        await eventually(postmaster_told, "the report to the postmaster", within=60)
        (first,) = await answered(js, qid)
        report_id = first.report_queue_id
        assert report_id is not None
        (second,) = await answered(js, report_id)
        to_postmaster = second.report_queue_id
        assert to_postmaster is not None

        async def settled() -> bool:
            if not await completed(js, to_postmaster):
                return False
            return await event_consumers_idle(js)

        await eventually(settled, "the report to the postmaster to complete", within=30)
        await asyncio.sleep(1.0)  # room for anything that should not come
        assert [(m[0], tuple(m[1])) for m in sink.received] == [(NULL_SENDER, (POSTMASTER,))]
        parsed = parse(sink.received[0][2])
        assert parsed["To"] == POSTMASTER
        # What bounced is the report to the sender (the report itself is attached).
        assert SENDER.encode() in all_failures(email.message_from_bytes(sink.received[0][2]))[1]
        assert [r.report_of for r in await reports_in_stream(js)] == [qid, report_id]
    finally:
        for service in reversed(running):
            await service.close()
