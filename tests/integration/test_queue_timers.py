"""Durable timers on a real nats-server: retry after retry_interval, one delay warning
after warn_after, expiry at bounce_after; with the queue service (and nats-server)
restarted in the middle. Then `mailbus queue ...` as an operator runs it.

Intervals are seconds here; the sink answers 4xx until the test says otherwise.
The test plays ingress (MessageReceived) and the notifier (ReportSent).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nats.js import JetStreamContext
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.common.config import Config, load_config_text
from libs.common.contract.events import MessageDelayed, MessageExpired
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import Running
from libs.common.runtime.telemetry import setup_telemetry
from tests.support import queue
from tests.support.cli import mailbus
from tests.support.queue import (
    answer_report,
    equals,
    not_,
    positive,
    receive,
    start_delivery,
    start_queue,
    zero,
)
from tests.support.sink import Sink
from tests.support.streams import (
    body_exists,
    completed,
    count_of,
    eventually,
    history,
    timers_of,
    types,
)

REPO = Path(__file__).resolve().parents[2]
SinkFactory = Callable[..., tuple[Sink, int]]
services = queue.services  # a shared fixture
LATER = "451 4.2.0 mailbox busy, try later"


def make_config(port: int, retry: str, warn: str, bounce: str) -> Config:
    return load_config_text(
        f"""
server: {{hostname: mx.example.test, local_domains: [example.test]}}
delivery: {{mode: relay, relay_host: {{host: 127.0.0.1, port: {port}}}, tls: none}}
queue: {{retry_interval: {retry}, warn_after: {warn}, bounce_after: {bounce}}}
"""
    )


async def test_deferred_recipient_is_retried_after_retry_interval(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: SinkFactory,
    services: list[Running],
) -> None:
    spans = InMemorySpanExporter()
    setup_telemetry("test", processor=SimpleSpanProcessor(spans))
    sink, port = sink_factory({"later@remote.test": LATER})
    config = make_config(port, retry="2s", warn="1h", bounce="1d")
    queue_service = await start_queue(config, nats_server)
    services.append(queue_service)
    services.append(await start_delivery(config, nats_server))
    first = datetime.now(UTC)
    with trace.get_tracer("test").start_as_current_span("smtp session") as session:
        await receive(js, "QRETRY", ["now@remote.test", "later@remote.test"])
    await eventually(lambda: positive(count_of(js, "QRETRY", "DeliveryDeferred")), "a deferral")

    # the queue restarts while the retry timer is pending; the server keeps the timer
    await queue_service.close()
    sink.replies.clear()
    services.append(await start_queue(config, nats_server))

    await eventually(lambda: completed(js, "QRETRY"), "completion")
    events = await history(js, "QRETRY")
    # the retry round has its record; the first attempt's is MessageReceived itself
    rounds = [e for e in events if e.type == "DeliveryScheduled"]
    assert [(r.attempt, r.recipients) for r in rounds] == [(2, ("later@remote.test",))]
    assert rounds[0].occurred_at - first >= timedelta(seconds=2)
    assert [r for _, r, _ in sink.received] == [["now@remote.test"], ["later@remote.test"]]
    await eventually(lambda: not_(body_exists(js, "QRETRY")), "body deleted")
    await eventually(lambda: zero(timers_of(js, "QRETRY")), "timers purged")

    # attempt 1 is part of the session's trace; the retry is a new trace linked to it
    session_trace = session.get_span_context().trace_id
    finished = list(spans.get_finished_spans())
    attempts = {
        s.attributes["mailbus.attempt"]: s
        for s in finished
        if s.name == "smtp deliver"
        and s.attributes
        and s.attributes["mailbus.queue_id"] == "QRETRY"
    }
    assert attempts[1].context.trace_id == session_trace
    retry = attempts[2].context.trace_id
    assert retry != session_trace
    (timer,) = [
        s for s in finished if s.name == "queue timer retry" and s.context.trace_id == retry
    ]
    assert [link.context.trace_id for link in timer.links] == [session_trace]


async def test_one_delay_warning_then_expiry_across_restarts(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: SinkFactory,
    services: list[Running],
) -> None:
    sink, port = sink_factory({"stuck@remote.test": LATER})
    config = make_config(port, retry="1s", warn="2s", bounce="5s")
    queue_service = await start_queue(config, nats_server)
    delivery = await start_delivery(config, nats_server)
    services.extend([queue_service, delivery])
    arrival = (await receive(js, "QSLOW", ["stuck@remote.test"])).occurred_at
    await eventually(lambda: positive(count_of(js, "QSLOW", "DeliveryDeferred")), "a deferral")

    # everything goes down for a moment: queue, delivery and nats-server itself
    await queue_service.close()
    await delivery.close()
    nats_server.stop()
    nats_server.start()
    queue_service = await start_queue(config, nats_server)
    services.extend([queue_service, await start_delivery(config, nats_server)])

    await eventually(lambda: positive(count_of(js, "QSLOW", "MessageDelayed")), "the warning")
    await queue_service.close()  # and the queue once more, between warning and expiry
    services.append(await start_queue(config, nats_server))
    await eventually(lambda: completed(js, "QSLOW"), "expiry", within=15)

    events = await history(js, "QSLOW")
    kinds = types(events)
    assert kinds.count("MessageDelayed") == 1 and kinds.count("MessageExpired") == 1
    assert kinds.index("MessageDelayed") < kinds.index("MessageExpired")
    assert "MessageCompleted" not in kinds  # MessageExpired says who expired
    assert kinds.count("DeliveryScheduled") >= 1  # retried in between
    (delayed,) = [e for e in events if isinstance(e, MessageDelayed)]
    (expired,) = [e for e in events if isinstance(e, MessageExpired)]
    assert delayed.occurred_at - arrival >= timedelta(seconds=2)
    assert delayed.will_retry_until == arrival + timedelta(seconds=5)
    assert [(o.action, o.status) for o in delayed.outcomes] == [("delayed", "4.2.0")]
    assert expired.occurred_at - arrival >= timedelta(seconds=5)
    assert [(o.address, o.status) for o in expired.outcomes] == [("stuck@remote.test", "4.4.7")]
    assert "451" in expired.outcomes[0].diagnostic
    assert sink.received == []

    # the body waits for the notifier's answers to both reports (RET=FULL needs it)
    await asyncio.sleep(0.5)
    assert await body_exists(js, "QSLOW")
    await answer_report(js, "QSLOW", "QSLOW.delayed", "delay")
    await asyncio.sleep(0.3)
    assert await body_exists(js, "QSLOW")
    await answer_report(js, "QSLOW", "QSLOW.expired", "expiry")
    await eventually(lambda: not_(body_exists(js, "QSLOW")), "body deleted")
    await eventually(lambda: zero(timers_of(js, "QSLOW")), "timers purged")
    assert types(await history(js, "QSLOW")).count("MessageDelayed") == 1


# --- mailbus queue ------------------------------------------------------------------------


async def mailbus_queue(server: EmbeddedNats, *args: str) -> tuple[int, str, str]:
    return await mailbus("queue", *args, "--nats-url", server.url)


async def listed(server: EmbeddedNats) -> dict[str, dict[str, object]]:
    rc, out, err = await mailbus_queue(server, "list", "--json")
    assert rc == 0, err
    return {e["queue_id"]: e for e in map(json.loads, out.splitlines())}  # JSON lines


async def test_queue_cli_on_deferred_held_and_expired_messages(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: SinkFactory,
    services: list[Running],
) -> None:
    busy = ["a@remote.test", "b@remote.test", "c@remote.test", "old@remote.test"]
    sink, port = sink_factory(dict.fromkeys(busy, LATER))
    config = make_config(port, retry="10m", warn="1h", bounce="1d")
    services.append(await start_queue(config, nats_server))
    services.append(await start_delivery(config, nats_server))
    await receive(js, "QDEF", ["a@remote.test"])
    await receive(js, "QHOLD", ["b@remote.test"])
    await receive(js, "QDEL", ["c@remote.test"])
    # this one has waited for two days already: it expires after its first attempt
    await receive(js, "QOLD", ["old@remote.test"], at=datetime.now(UTC) - timedelta(days=2))
    for qid in ("QDEF", "QHOLD", "QDEL"):

        def deferred(q: str = qid) -> Awaitable[bool]:
            return positive(count_of(js, q, "DeliveryDeferred"))

        await eventually(deferred, qid)
    await eventually(lambda: positive(count_of(js, "QOLD", "MessageExpired")), "expiry")

    entries = await listed(nats_server)
    assert sorted(entries) == ["QDEF", "QDEL", "QHOLD"]  # the expired one has left
    assert entries["QDEF"]["state"] == "deferred"
    assert entries["QDEF"]["recipients"] == ["a@remote.test"]
    assert entries["QDEF"]["next_attempt"] is not None and "451" in str(
        entries["QDEF"]["last_reply"]
    )
    rc, out, _ = await mailbus_queue(nats_server, "list")
    assert rc == 0 and "QDEF" in out and "deferred" in out and "3 message(s)" in out

    rc, out, err = await mailbus_queue(nats_server, "hold", "QHOLD")
    assert rc == 0, err
    assert (await listed(nats_server))["QHOLD"]["state"] == "held"
    rc, out, err = await mailbus_queue(nats_server, "show", "QOLD")
    assert rc == 0, err
    # the first attempt's deferral, in its job's results
    assert "MessageExpired" in out and "4.4.7" in out and "old@remote.test deferred" in out
    rc, _, err = await mailbus_queue(nats_server, "hold", "NOSUCHID")
    assert rc == 1 and "no such message" in err

    # the remote side recovers; an operator retries one message and deletes another
    sink.replies.clear()
    rc, out, err = await mailbus_queue(nats_server, "retry", "QDEF")
    assert rc == 0 and "QDEF" in out, err
    rc, out, err = await mailbus_queue(nats_server, "delete", "QDEL")
    assert rc == 0, err
    await eventually(lambda: completed(js, "QDEF"), "QDEF done")
    await eventually(lambda: not_(body_exists(js, "QDEF")), "QDEF body deleted")
    await eventually(lambda: not_(body_exists(js, "QDEL")), "QDEL body deleted")
    assert types(await history(js, "QDEL"))[-1] == "MessageDeleted"
    assert sorted(await listed(nats_server)) == ["QHOLD"]  # held: the retry left it alone

    # the index survives a restart of the queue: it is rebuilt from the log
    await services[0].close()
    services.append(await start_queue(config, nats_server))
    assert (await listed(nats_server))["QHOLD"]["state"] == "held"

    rc, out, err = await mailbus_queue(nats_server, "release", "QHOLD")
    assert rc == 0, err
    await eventually(lambda: completed(js, "QHOLD"), "QHOLD done")

    async def none_listed() -> bool:
        return await listed(nats_server) == {}

    await eventually(none_listed, "QHOLD out of the listing")
    held = [e.type for e in await history(js, "QHOLD")]
    assert held.index("MessageHeld") < held.index("MessageReleased")
    assert sorted(r[0] for _, r, _ in sink.received) == ["a@remote.test", "b@remote.test"]
    # deleted before its retry: the first attempt only, which has no record of its own
    assert await equals(count_of(js, "QDEL", "DeliveryScheduled"), 0)
