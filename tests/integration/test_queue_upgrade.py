"""Upgrading to the partitioned queue: what the version before left in the streams (events
and timers without a partition token, its consumers `queue` and `queue-timers`, its one
fencing epoch) is still processed, on a real nats-server.

The old version's writes are made here as it made them: its subject shapes, its consumer
definitions, and its decisions taken by the same pure core (services/queue/core).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nats.js import JetStreamContext, api

from libs.common.config import load_config_text
from libs.common.contract import subjects
from libs.common.contract.events import (
    AnyEvent,
    Client,
    DeliveryDeferred,
    DeliveryJob,
    Event,
    MessageReceived,
    Recipient,
    RecipientOutcome,
    RecipientsFailed,
    event_type,
)
from libs.common.mail.bodies import BodyStore
from libs.common.mail.history import message_history
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.fence import is_fenced
from libs.common.runtime.lease import Lease
from libs.common.runtime.service import Running, start_service
from services.notifier.service import NotifierService
from services.queue.adapters.consumer import INPUT_TYPES
from services.queue.adapters.timers import rfc3339
from services.queue.core import MessageState, Routing, SetTimer, Timing, apply, decide, fold
from tests.support import queue
from tests.support.procs import processes
from tests.support.queue import BODY, start_delivery, start_queue
from tests.support.sink import Sink
from tests.support.streams import body_exists, eventually

services = queue.services  # a shared fixture
TIMING = Timing(
    retry_interval=timedelta(seconds=2), warn_after=timedelta(days=1), bounce_after=timedelta(5)
)


def _old_event(qid: str, kind: str) -> str:
    return f"mailbus.evt.{qid}.{kind}"


async def _old_consumers(js: JetStreamContext) -> None:
    """The queue's two durables as the version before partitions created them."""
    await js.add_consumer(
        subjects.EVENTS_STREAM,
        api.ConsumerConfig(
            durable_name=subjects.QUEUE_CONSUMER,
            filter_subjects=[_old_event("*", t) for t in INPUT_TYPES],
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=8.0,
        ),
    )
    await js.add_consumer(
        subjects.TIMERS_STREAM,
        api.ConsumerConfig(
            durable_name=subjects.QUEUE_TIMERS_CONSUMER,
            filter_subject="mailbus.timer.fire.>",
            ack_policy=api.AckPolicy.EXPLICIT,
            ack_wait=8.0,
        ),
    )


async def _publish_old(js: JetStreamContext, event: Event) -> None:
    await js.publish(
        _old_event(event.queue_id, event_type(event)),
        event.model_dump_json().encode(),
        headers={"Nats-Msg-Id": event.event_id},
    )


async def _old_queue_decides(
    js: JetStreamContext, state: MessageState, trigger: AnyEvent, retry_in: timedelta
) -> tuple[MessageState, list[DeliveryJob]]:
    """What the old queue did with one input: its events and timers on the old shapes.
    Jobs are returned, not published (the test plays their delivery)."""
    routing = Routing.of("relay", ())
    outputs = decide(state, trigger, datetime.now(UTC), routing, TIMING)
    state = apply(state, trigger)
    jobs: list[DeliveryJob] = []
    for output in outputs:
        if isinstance(output, DeliveryJob):
            jobs.append(output)
        elif isinstance(output, SetTimer):
            due = datetime.now(UTC) + retry_in if output.kind == "retry" else output.due
            await js.publish(
                f"mailbus.timer.sched.{output.queue_id}.{output.kind}",
                output.fire.model_copy(update={"due": due}).model_dump_json().encode(),
                headers={
                    "Nats-Schedule": f"@at {rfc3339(due)}",
                    "Nats-Schedule-Target": f"mailbus.timer.fire.{output.queue_id}.{output.kind}",
                },
            )
        elif isinstance(output, Event):
            await _publish_old(js, output)
            state = apply(state, output)
    return state, jobs


async def _old_queue_acked_everything(js: JetStreamContext) -> None:
    sub = await js.pull_subscribe_bind(subjects.QUEUE_CONSUMER, subjects.EVENTS_STREAM)
    try:
        for msg in await sub.fetch(100, timeout=2):
            await msg.ack_sync()
    finally:
        await sub.unsubscribe()


async def test_mail_queued_before_partitions_is_delivered_and_its_timers_fire(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
) -> None:
    sink, port = sink_factory()
    await _old_consumers(js)
    await js.publish(subjects.QUEUE_EPOCH_SUBJECT, b"old-queue")
    # A message the old queue took, handed out and saw deferred: its retry timer (old
    # shape) is due in a few seconds.
    deferred_qid = "QOLDDEFER"
    received = await _received_old(js, deferred_qid, "later@remote.test")
    state, (job,) = await _old_queue_decides(js, fold([]), received, timedelta(0))
    result = DeliveryDeferred(
        event_id=f"{job.job_id}.deferred",
        queue_id=deferred_qid,
        job_id=job.job_id,
        attempt=job.attempt,
        recipient="later@remote.test",
        reply_code=451,
        reply_text="try later",
        status="4.0.0",
    )
    await _publish_old(js, result)
    state, _ = await _old_queue_decides(js, state, result, timedelta(seconds=3))
    await _old_queue_acked_everything(js)
    # And one it never got to: its MessageReceived waits in the old consumer.
    waiting_qid = "QOLDWAIT"
    await _received_old(js, waiting_qid, "now@remote.test")
    assert await _pending(js, subjects.TIMERS_STREAM, "mailbus.timer.sched.*.*") >= 1

    config = load_config_text(
        "server: {hostname: mx.example.test}\n"
        f"delivery: {{mode: relay, relay_host: {{host: 127.0.0.1, port: {port}}}, tls: none}}\n"
        "queue: {retry_interval: 2s, warn_after: 1d, bounce_after: 5d}\n"
    )
    services.append(await start_queue(config, nats_server))
    services.append(await start_delivery(config, nats_server))

    for qid in (waiting_qid, deferred_qid):

        def completed(q: str = qid) -> Awaitable[bool]:
            return _completed(js, q)

        await eventually(completed, f"{qid} delivered", within=30)
    delivered = sorted(rcpts[0] for _, rcpts, _ in sink.received)
    assert delivered == ["later@remote.test", "now@remote.test"]
    # Both subject shapes in one history; nothing left of either message's timers.
    history = await message_history(js, deferred_qid)
    # (the first attempt has no DeliveryScheduled of its own; the retry round has one)
    assert [e.type for e in history][:3] == [
        "MessageReceived",
        "DeliveryDeferred",
        "DeliveryScheduled",
    ]
    assert fold(history).completed  # every recipient final: no event of its own now
    for qid in (waiting_qid, deferred_qid):
        assert await _pending(js, subjects.TIMERS_STREAM, subjects.message_timers_filter(qid)) == 0
    # The old timers consumer now reads only the old shape.
    info = await js.consumer_info(subjects.TIMERS_STREAM, subjects.QUEUE_TIMERS_CONSUMER)
    assert info.config.filter_subject == subjects.LEGACY_TIMER_FIRES


async def test_a_new_queue_fences_off_an_old_one_still_running(
    nats_server: EmbeddedNats, js: JetStreamContext, tmp_path: Path
) -> None:
    """The old queue wrote under one epoch on `mailbus.evt.queue-epoch`; a new replica
    appends a marker there before it decides anything, so an old queue that is still
    running (a rolling upgrade) has its next write refused."""
    await js.publish(subjects.QUEUE_EPOCH_SUBJECT, b"old-queue")
    old_epoch = (await js.get_last_msg(subjects.EVENTS_STREAM, subjects.QUEUE_EPOCH_SUBJECT)).seq
    async with processes(tmp_path, "server: {hostname: mx.example.test}\n", nats_server.url) as p:
        new = await p.start("queue")
        await new.ready()
        last = await js.get_last_msg(subjects.EVENTS_STREAM, subjects.QUEUE_EPOCH_SUBJECT)
        assert last.seq is not None and old_epoch is not None and last.seq > old_epoch
        # A write of the old holder, as fence.py makes it, is refused now.
        refused: BaseException | None = None
        try:
            await js.publish(
                _old_event("QSTALE", "DeliveryScheduled"),
                b"{}",
                headers={
                    api.Header.EXPECTED_LAST_SUBJECT_SEQUENCE.value: str(old_epoch),
                    "Nats-Expected-Last-Subject-Sequence-Subject": subjects.QUEUE_EPOCH_SUBJECT,
                },
            )
        except Exception as exc:
            refused = exc
        assert refused is not None and is_fenced(refused), refused
        # And an old queue started again stands by: the owner of partition 0 holds the
        # old version's single lease.
        # (Taken in the round before the replica reported ready.)
        standby = Lease(js, subjects.QUEUE_LEADER_BUCKET, subjects.QUEUE_LEADER_KEY, "old")
        assert not await standby.try_acquire()
        await asyncio.sleep(2.5)  # renewed meanwhile, not left to expire
        assert not await standby.try_acquire()


async def _received_old(js: JetStreamContext, qid: str, rcpt: str) -> MessageReceived:
    """What the old ingress wrote: the body, then MessageReceived on the old subject."""
    await BodyStore(js).put(qid, BODY)
    event = MessageReceived(
        event_id=f"{qid}.received",
        queue_id=qid,
        mail_from="alice@example.test",
        recipients=(Recipient(address=rcpt),),
        size=len(BODY),
        client=Client(ip="127.0.0.1"),
    )
    await _publish_old(js, event)
    return event


async def _pending(js: JetStreamContext, stream: str, subject: str) -> int:
    info = await js.stream_info(stream, subjects_filter=subject)
    return sum((info.state.subjects or {}).values())


async def _completed(js: JetStreamContext, qid: str) -> bool:
    """Every recipient final (the fold), and the queue saw it: the body is gone."""
    return fold(await message_history(js, qid)).completed and not await body_exists(js, qid)


async def test_a_report_due_for_an_old_event_still_goes_out(
    nats_server: EmbeddedNats, js: JetStreamContext
) -> None:
    """The old queue wrote RecipientsFailed on the old shape and the notifier had not
    read it yet: the new notifier's consumer reads both shapes, so the sender still
    gets the report (its ReportSent is on the new shape, in the same history)."""
    qid = "QOLDFAIL"
    await _received_old(js, qid, "bob@remote.test")
    failed = RecipientsFailed(
        event_id=f"{qid}.a1.failed",
        queue_id=qid,
        attempt=1,
        outcomes=(
            RecipientOutcome(
                address="bob@remote.test",
                action="failed",
                status="5.1.1",
                diagnostic="550 5.1.1 No such user",
                last_attempt_at=datetime.now(UTC),
            ),
        ),
    )
    await _publish_old(js, failed)
    config = load_config_text("server: {hostname: mx.example.test}\n")
    notifier = await start_service("notifier", NotifierService, config, [nats_server.url])
    try:

        async def answered() -> bool:
            return any(e.type == "ReportSent" for e in await message_history(js, qid))

        await eventually(answered, "the report of the old failure", within=30)
    finally:
        await notifier.close()
