"""One message end to end: SMTP in, policy over NATS, the event log, queue, delivery, relay sink.

All four services run in this process against a real nats-server; the client
is the standard library's smtplib, the relay host a real aiosmtpd sink.
"""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest
from nats.js import JetStreamContext
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.common.config import Config, load_config_text
from libs.common.contract import subjects
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import Running
from libs.common.runtime.telemetry import setup_telemetry
from tests.support.pipeline import pipeline, smtp_address
from tests.support.sink import Sink
from tests.support.streams import body_exists, completed, eventually, history, types

MESSAGE = (
    b"From: sender@outside.test\r\n"
    b"To: a@remote.test, b@remote.test, c@remote.test\r\n"
    b"Subject: end to end\r\n"
    b"Message-ID: <e2e-1@outside.test>\r\n"
    b"\r\n"
    b"First line.\r\n"
    b".a line that starts with a dot\r\n"
    b"Last line.\r\n"
)


def config(sink_port: int) -> Config:
    return load_config_text(
        f"""
server: {{hostname: mx.example.test, local_domains: [example.test]}}
listeners:
  - {{name: smtp, protocol: smtp, address: "127.0.0.1:0", tls: none}}
ip_groups: {{inside: [127.0.0.1]}}
relay: {{mode: restricted, allowed_ip_group: inside, smtp_auth: false}}
security: {{require_sender_domain_dns: false}}
antispam: {{spf: false}}
policy: {{timeout: 1s}}
users:
  - {{address: bob@example.test, password_hash: "$argon2id$v=19$m=65536,t=3,p=4$..."}}
delivery:
  mode: relay
  relay_host: {{host: 127.0.0.1, port: {sink_port}}}
  tls: none
"""
    )


@dataclass
class Stack:
    server: EmbeddedNats
    config: Config
    sink: Sink
    running: dict[str, Running]

    @property
    def smtp(self) -> tuple[str, int]:
        return smtp_address(self.running)


@pytest.fixture
async def stack(
    nats_server: EmbeddedNats, sink_factory: Callable[..., tuple[Sink, int]]
) -> AsyncIterator[Stack]:
    sink, port = sink_factory()
    cfg = config(port)
    async with pipeline(cfg, [nats_server.url]) as running:
        yield Stack(nats_server, cfg, sink, running)


def send(
    addr: tuple[str, int], rcpts: list[str], source: str = "127.0.0.1"
) -> dict[str, tuple[int, bytes]]:
    """Send MESSAGE; returns the refused recipients as smtplib reports them."""
    with smtplib.SMTP(addr[0], addr[1], source_address=(source, 0), timeout=10) as client:
        return client.sendmail("sender@outside.test", rcpts, MESSAGE)


async def stream_count(js: JetStreamContext, stream: str) -> int:
    """Messages of a stream, less the queue's fencing markers (no mail event)."""
    info = await js.stream_info(stream, subjects_filter=">")
    per_subject = info.state.subjects or {}
    epochs = subjects.QUEUE_EPOCH_SUBJECT
    return sum(n for subject, n in per_subject.items() if not subject.startswith(epochs))


async def test_three_recipients_reach_the_relay_byte_for_byte(
    stack: Stack, js: JetStreamContext
) -> None:
    spans = InMemorySpanExporter()
    setup_telemetry("test", processor=SimpleSpanProcessor(spans))
    rcpts = ["a@remote.test", "b@remote.test", "c@remote.test"]
    refused = await asyncio.to_thread(send, stack.smtp, rcpts)
    assert refused == {}

    await eventually(lambda: _true(len(stack.sink.received) == 1), "the sink to get the message")
    mail_from, got_rcpts, content = stack.sink.received[0]
    assert mail_from == "sender@outside.test"
    assert sorted(got_rcpts) == rcpts
    header, _, rest = content.partition(b"\r\n")
    # One Received header (possibly folded onto continuation lines), then the bytes as sent.
    assert header.startswith(b"Received: from ")
    while rest[:1] in (b"\t", b" "):
        _, _, rest = rest.partition(b"\r\n")
    assert rest == MESSAGE
    assert content.count(b"\nReceived:") + content.startswith(b"Received:") == 1

    qid = await _only_queue_id(js)
    await eventually(lambda: completed(js, qid), "every recipient final")
    kinds = types(await history(js, qid))
    # the whole log of a relayed message: no event of the queue's own
    assert sorted(kinds) == ["DeliverySucceeded"] * 3 + ["MessageReceived"]
    await eventually(lambda: _not(body_exists(js, qid)), "the body to be deleted")

    # One trace holds the whole path: session, policy, queue, delivery attempt.
    def trace_ids(prefix: str) -> set[int]:
        finished = spans.get_finished_spans()
        return {s.context.trace_id for s in finished if s.name.startswith(prefix)}

    await eventually(lambda: _true(bool(trace_ids("smtp deliver"))), "the delivery span")
    session = trace_ids("smtp session")
    assert len(session) == 1
    for prefix in ("policy rcpt", "policy data", "queue MessageReceived", "smtp deliver"):
        assert trace_ids(prefix) == session, prefix
    assert trace_ids("queue DeliveryAttempted") == session


async def test_relay_refused_outside_the_group_local_domain_accepted(
    stack: Stack, js: JetStreamContext
) -> None:
    with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
        await asyncio.to_thread(send, stack.smtp, ["x@remote.test"], "127.0.0.2")
    code, text = refused.value.recipients["x@remote.test"]
    assert code == 554 and text.startswith(b"5.7.1"), (code, text)
    assert await stream_count(js, subjects.EVENTS_STREAM) == 0
    assert await stream_count(js, subjects.BODIES_STREAM) == 0

    # The same outside client may still send to a local domain.
    assert await asyncio.to_thread(send, stack.smtp, ["bob@example.test"], "127.0.0.2") == {}
    qid = await _only_queue_id(js)
    received = (await history(js, qid))[0]
    assert received.type == "MessageReceived"
    assert [r.address for r in received.recipients] == ["bob@example.test"]


async def test_policy_down_means_451_and_nothing_stored(stack: Stack, js: JetStreamContext) -> None:
    await stack.running.pop("policy").close()
    with pytest.raises(smtplib.SMTPResponseException) as failed:
        await asyncio.to_thread(send, stack.smtp, ["a@remote.test"])
    assert failed.value.smtp_code in (421, 451)
    error = failed.value.smtp_error
    assert isinstance(error, bytes) and error.startswith(b"4.3.0")
    assert await stream_count(js, subjects.EVENTS_STREAM) == 0
    assert await stream_count(js, subjects.BODIES_STREAM) == 0


async def _only_queue_id(js: JetStreamContext) -> str:
    sub = await js.subscribe(subjects.events_of_type("MessageReceived"), ordered_consumer=True)
    try:
        msg = await sub.next_msg(timeout=5)
    finally:
        await sub.unsubscribe()
    return msg.subject.split(".")[2]


async def _has(js: JetStreamContext, qid: str, kind: str) -> bool:
    return kind in types(await history(js, qid))


async def _true(value: bool) -> bool:
    return value


async def _not(value: object) -> bool:
    return not await value  # type: ignore[misc]
