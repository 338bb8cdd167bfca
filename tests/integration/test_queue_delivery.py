"""Queue and delivery on a real nats-server, delivering to real aiosmtpd sinks on loopback.

The test plays ingress: it stores a body and publishes MessageReceived, then
watches the event log, the sink and the bodies stream.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.common.config import Config, load_config_text
from libs.common.contract import subjects
from libs.common.contract.events import DeliveryJob, DeliveryScheduled, Destination
from libs.common.mail.mailbox import MailboxStore
from libs.common.runtime import bus
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import Running
from libs.common.runtime.telemetry import setup_telemetry
from tests.support import queue
from tests.support.queue import ACK_WAIT_S, BODY, receive, start_delivery, start_queue
from tests.support.sink import Sink, self_signed
from tests.support.streams import (
    body_exists,
    completed,
    count_of,
    eventually,
    history,
    jobs_waiting,
    results_by_recipient,
    results_count,
    stored,
    types,
)

REPO = Path(__file__).resolve().parents[2]
services = queue.services  # a shared fixture


# --- helpers -----------------------------------------------------------------------------


def config_text(port: int, tls: str = "opportunistic", threads: int = 4) -> str:
    return f"""
server:
  hostname: mx.example.test
  local_domains: [example.test]
delivery:
  mode: relay
  relay_host:
    host: 127.0.0.1
    port: {port}
  tls: {tls}
  max_delivery_threads: {threads}
  connect_timeout: 5s
"""


def make_config(port: int, tls: str = "opportunistic", threads: int = 4) -> Config:
    return load_config_text(config_text(port, tls, threads))


# --- tests -------------------------------------------------------------------------------


async def test_three_recipients_delivered_and_completed(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
) -> None:
    spans = InMemorySpanExporter()
    setup_telemetry("test", processor=SimpleSpanProcessor(spans))
    sink, port = sink_factory()
    config = make_config(port)
    services.append(await start_queue(config, nats_server))
    services.append(await start_delivery(config, nats_server))
    rcpts = ["one@remote.test", "two@remote.test", "three@elsewhere.test"]

    with trace.get_tracer("test").start_as_current_span("smtp session") as session:
        await receive(js, "QOK", rcpts)
    trace_id = session.get_span_context().trace_id

    await eventually(lambda: completed(js, "QOK"), "every recipient final")
    await eventually(lambda: _not(body_exists(js, "QOK")), "body deleted")
    await eventually(lambda: _zero(jobs_waiting(js)), "job acked")

    # one SMTP transaction with all three recipients, the body byte for byte
    assert sink.received == [("alice@example.test", rcpts, BODY)]
    events = await history(js, "QOK")
    # two stored events of the queue's own less than before: MessageReceived records the
    # first attempt, and every recipient final is the completion
    assert types(events) == ["MessageReceived", *["DeliverySucceeded"] * 3]
    # as stored: the job's three results in one event
    assert types(await stored(js, "QOK")) == ["MessageReceived", "DeliveryAttempted"]
    for e in events:
        if e.type == "DeliverySucceeded":
            assert (e.reply_code, e.status, e.remote_host) == (250, "2.0.0", "127.0.0.1")
            assert e.destination is not None and e.destination.key == "relay:"
            assert e.tls_version is None  # the sink offers no STARTTLS

    # one trace from the "SMTP session" through the queue to the SMTP client
    names = {s.name: s for s in _finished(spans) if s.context.trace_id == trace_id}
    assert {"queue MessageReceived", "smtp deliver", "queue DeliveryAttempted"} <= set(names)
    client = names["smtp deliver"]
    assert client.kind == trace.SpanKind.CLIENT
    assert client.attributes is not None
    assert client.attributes["mailbus.queue_id"] == "QOK"
    assert client.attributes["server.address"] == "127.0.0.1"
    assert client.attributes["smtp.reply_code"] == 250


async def test_failed_and_deferred_recipients_do_not_complete(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
) -> None:
    sink, port = sink_factory(
        {
            "nobody@remote.test": "550 5.1.1 no such user",
            "later@remote.test": "451 temporary trouble",
        }
    )
    config = make_config(port)
    services.append(await start_queue(config, nats_server))
    services.append(await start_delivery(config, nats_server))
    await receive(js, "QMIX", ["good@remote.test", "nobody@remote.test", "later@remote.test"])

    await eventually(lambda: _equals(results_count(js, "QMIX"), 3), "three results")
    await eventually(lambda: _zero(jobs_waiting(js)), "job acked")
    await asyncio.sleep(1.0)  # room for a wrong completion (the body deleted) to show up

    events = await results_by_recipient(js, "QMIX")
    good, nobody, later = (
        events["good@remote.test"],
        events["nobody@remote.test"],
        events["later@remote.test"],
    )
    assert good.type == "DeliverySucceeded"
    assert nobody.type == "DeliveryFailed"
    assert (nobody.reply_code, nobody.status) == (550, "5.1.1")
    assert "no such user" in nobody.reply_text
    assert later.type == "DeliveryDeferred"
    assert (later.reply_code, later.status) == (451, "4.3.0")
    assert not await completed(js, "QMIX")
    assert await body_exists(js, "QMIX")  # still needed for the retry
    assert [r for _, r, _ in sink.received] == [["good@remote.test"]]


async def test_local_recipients_go_to_their_mailbox(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
) -> None:
    sink, port = sink_factory()
    config = make_config(port)
    services.append(await start_queue(config, nats_server))
    services.append(await start_delivery(config, nats_server))
    await receive(js, "QLOC", ["far@remote.test", "bob@example.test"])

    await eventually(lambda: _equals(results_count(js, "QLOC"), 2), "two results")
    events = await results_by_recipient(js, "QLOC")
    assert events["far@remote.test"].type == "DeliverySucceeded"
    local = events["bob@example.test"]
    assert (local.type, local.status, local.remote_host) == (
        "DeliverySucceeded",
        "2.0.0",
        "mailbox",
    )
    (entry,) = await MailboxStore(js).entries("bob@example.test")
    assert (await MailboxStore(js).read("bob@example.test", entry)).endswith(BODY)
    # the first attempt's jobs are recorded by their results, destination included
    assert sorted(e.destination.key for e in events.values() if e.destination) == [
        "local:example.test",
        "relay:",
    ]
    assert [r for _, r, _ in sink.received] == [["far@remote.test"]]


@pytest.mark.parametrize(
    ("sink_tls", "mode", "outcome", "tls_used"),
    [
        (True, "opportunistic", "DeliverySucceeded", True),
        (True, "none", "DeliverySucceeded", False),
        (True, "required", "DeliverySucceeded", True),
        (False, "required", "DeliveryDeferred", False),
    ],
)
async def test_tls_modes(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
    tmp_path: Path,
    sink_tls: bool,
    mode: str,
    outcome: str,
    tls_used: bool,
) -> None:
    sink, port = sink_factory(tls=self_signed(tmp_path) if sink_tls else None)
    config = make_config(port, tls=mode)
    services.append(await start_queue(config, nats_server))
    services.append(await start_delivery(config, nats_server))
    await receive(js, "QTLS", ["someone@remote.test"])

    await eventually(lambda: _equals(results_count(js, "QTLS"), 1), "the result")
    (result,) = (await results_by_recipient(js, "QTLS")).values()
    assert result.type == outcome
    assert sink.tls_seen == ([tls_used] if outcome == "DeliverySucceeded" else [])
    if tls_used:
        assert result.tls_version is not None and result.tls_version.startswith("TLS")
    else:
        assert result.tls_version is None
    if outcome == "DeliveryDeferred":
        assert result.status == "4.7.10" and "STARTTLS" in result.reply_text


async def test_queue_restart_rebuilds_state_from_the_stream(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
) -> None:
    sink, port = sink_factory()
    config = make_config(port)
    queue = await start_queue(config, nats_server)
    services.append(queue)
    await receive(js, "QRST", ["a@remote.test", "b@remote.test"])
    await eventually(lambda: _equals(jobs_waiting(js), 1), "the job")
    await queue.close()

    # results arrive while no queue runs
    services.append(await start_delivery(config, nats_server))
    await eventually(lambda: _equals(results_count(js, "QRST"), 2), "results")
    await asyncio.sleep(0.5)
    assert await body_exists(js, "QRST")  # no queue ran to see the completion

    # a new queue (empty cache) folds the history, which says completed, and cleans up
    services.append(await start_queue(config, nats_server))
    await eventually(lambda: _not(body_exists(js, "QRST")), "body deleted")
    assert await completed(js, "QRST")
    # neither the first attempt nor the completion wrote an event of its own
    assert await count_of(js, "QRST", "MessageCompleted") == 0
    assert await count_of(js, "QRST", "DeliveryScheduled") == 0
    assert len(sink.received) == 1


async def test_worker_crash_before_ack_is_not_sent_again_and_completes_once(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
    tmp_path: Path,
) -> None:
    sink, port = sink_factory()
    config_file = tmp_path / "mailbus.yaml"
    config_file.write_text(config_text(port))
    config = make_config(port)
    rcpts = ["x@remote.test", "y@remote.test", "z@remote.test"]

    # the queue schedules the job, then stops, so the body outlives the first attempt
    queue = await start_queue(config, nats_server)
    services.append(queue)
    await receive(js, "QCRASH", rcpts)
    await eventually(lambda: _equals(jobs_waiting(js), 1), "the job")
    await queue.close()

    env = {
        **os.environ,
        "MAILBUS_FAULT": "delivery.exit_before_ack",
        "MAILBUS_DELIVERY_ACK_WAIT": str(ACK_WAIT_S),
        "OTEL_TRACES_EXPORTER": "none",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.delivery",
        "--config",
        str(config_file),
        "--nats-url",
        nats_server.url,
        cwd=REPO,
        env=env,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    rc, stderr = proc.returncode, err.decode()
    assert rc == 137, stderr
    assert len(sink.received) == 1  # delivered by the worker that then died
    assert await results_count(js, "QCRASH") == 3
    assert await jobs_waiting(js) == 1  # never acked

    # a healthy worker gets the job once ack_wait runs out, finds its results in the
    # log, and acks it without sending the mail again
    services.append(await start_delivery(config, nats_server))
    await eventually(lambda: _equals(jobs_waiting(js), 0), "the job acked", within=30)
    assert len(sink.received) == 1  # no duplicate: the results were durable
    assert all(r == rcpts and body == BODY for _, r, body in sink.received)
    assert await results_count(js, "QCRASH") == 3

    services.append(await start_queue(config, nats_server))
    await eventually(lambda: _not(body_exists(js, "QCRASH")), "body deleted")
    assert await completed(js, "QCRASH")
    await asyncio.sleep(0.5)
    assert len(sink.received) == 1


async def test_max_delivery_threads_caps_all_workers_together(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
) -> None:
    sink, port = sink_factory(data_delay=0.4)
    config = make_config(port, threads=3)
    services.append(await start_queue(config, nats_server))
    for _ in range(3):  # 3 workers x 3 local slots, but 3 sessions at a time in all
        services.append(await start_delivery(config, nats_server))
    qids = [f"QCAP{i}" for i in range(9)]
    for qid in qids:
        await receive(js, qid, [f"{qid.lower()}@remote.test"])

    async def all_completed() -> bool:
        return all([await completed(js, q) for q in qids])

    await eventually(all_completed, "nine completed messages", within=30)
    assert len(sink.received) == 9
    # never more than 3 SMTP sessions open at the sink at once, and more than one
    assert 2 <= sink.max_sessions_open <= 3
    assert sink.max_in_data <= 3


async def test_stop_finishes_the_delivery_in_flight(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
) -> None:
    sink, port = sink_factory(data_delay=1.5)
    config = make_config(port)
    services.append(await start_queue(config, nats_server))
    delivery = await start_delivery(config, nats_server)
    services.append(delivery)
    await receive(js, "QSTOP", ["slow@remote.test"])

    async def in_data() -> bool:
        return sink.in_data > 0

    await eventually(in_data, "the delivery to be in DATA")
    await delivery.close()  # returns only once the job in flight is done
    assert len(sink.received) == 1
    assert await results_count(js, "QSTOP") == 1
    assert await jobs_waiting(js) == 0  # acked, not left for redelivery


# --- tiny async predicates -----------------------------------------------------------------


async def _not(value: Awaitable[bool]) -> bool:
    return not await value


async def _positive(value: Awaitable[int]) -> bool:
    return await value > 0


async def _zero(value: Awaitable[int]) -> bool:
    return await value == 0


async def _equals(value: Awaitable[int], expected: int) -> bool:
    return await value == expected


def _finished(exporter: InMemorySpanExporter) -> list[ReadableSpan]:
    return list(exporter.get_finished_spans())


async def test_a_message_the_previous_version_scheduled_is_delivered_and_completed(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: Callable[..., tuple[Sink, int]],
    services: list[Running],
) -> None:
    """Upgrade: the previous queue wrote a DeliveryScheduled for attempt 1 and the job
    (without `one_result`). This version's worker delivers the job,
    and this version's queue, folding that history, completes it and deletes the body."""
    sink, port = sink_factory()
    config = make_config(port)
    event = await receive(js, "QPREV", ["a@remote.test", "b@remote.test"])
    # What the previous queue wrote for it. This queue then meets the MessageReceived
    # too (its consumers are new): its plan is the same job, dropped as a duplicate.
    jid = "QPREV.a1.d0"
    destination = Destination(kind="relay")
    await bus.publish_event(
        js,
        DeliveryScheduled(
            event_id=f"{jid}.scheduled",
            queue_id="QPREV",
            job_id=jid,
            attempt=1,
            destination=destination,
            recipients=("a@remote.test", "b@remote.test"),
        ),
    )
    job = DeliveryJob(
        job_id=jid,
        queue_id="QPREV",
        attempt=1,
        destination=destination,
        mail_from=event.mail_from,
        recipients=event.recipients,
        size=event.size,
    )
    await bus.publish_model(js, subjects.job_subject(destination.key), job, msg_id=jid)

    services.append(await start_queue(config, nats_server))
    services.append(await start_delivery(config, nats_server))
    await eventually(lambda: _not(body_exists(js, "QPREV")), "body deleted")
    assert await completed(js, "QPREV")
    assert [r for _, r, _ in sink.received] == [["a@remote.test", "b@remote.test"]]
    assert await jobs_waiting(js) == 0
    # that queue's job asked for no DeliveryAttempted: one result per recipient, as it reads
    kinds = types(await stored(js, "QPREV"))
    assert kinds.count("DeliverySucceeded") == 2 and "DeliveryAttempted" not in kinds
