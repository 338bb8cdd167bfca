"""Traces for operators: `mailbus up` with OTEL_EXPORTER_OTLP_ENDPOINT set exports every
service's spans over OTLP/HTTP, and one message's spans share one trace id."""

from __future__ import annotations

import asyncio
import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from libs.common.runtime.embedded_nats import free_port
from tests.support.otlp import OtlpReceiver
from tests.support.sink import Sink
from tests.support.up import mailbus_up, relay_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver()
    r.start()
    yield r
    r.stop()


async def test_one_message_is_one_trace_across_service_processes(
    tmp_path: Path, receiver: OtlpReceiver, sink_factory: Callable[..., tuple[Sink, int]]
) -> None:
    sink, sink_port = sink_factory()
    smtp_port = free_port()
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf",
        "OTEL_BSP_SCHEDULE_DELAY": "100",
    }
    config = relay_config("mx.otel.test", smtp_port, sink_port)
    async with mailbus_up(tmp_path, config, env):

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
                client.sendmail("a@otel.test", ["b@remote.test"], b"Subject: t\r\n\r\nhi\r\n")

        await asyncio.to_thread(send)
        wanted = {"mailbus-ingress", "mailbus-policy", "mailbus-queue", "mailbus-delivery"}
        async with asyncio.timeout(30):
            while True:
                spans = receiver.snapshot()
                sessions = [s for s in spans if s.name == "smtp session"]
                if sessions and len(sink.received) == 1:
                    trace_id = sessions[0].trace_id
                    services = {s.service for s in spans if s.trace_id == trace_id}
                    if wanted <= services:
                        break
                await asyncio.sleep(0.2)
        mine = [s for s in receiver.snapshot() if s.trace_id == trace_id]
        assert any(s.name == "smtp deliver" for s in mine)
        assert any(s.name.startswith("policy ") for s in mine)
        assert any(s.name.startswith("queue ") for s in mine)
        # Semantic conventions: SERVER per SMTP session, CLIENT per delivery attempt,
        # PRODUCER per publish and CONSUMER per processed message, tagged as NATS.
        server, client, producer, consumer = 2, 3, 4, 5  # OTLP SpanKind values
        kinds = {(s.name.split(" ")[0], s.kind) for s in mine}
        assert ("smtp", server) in kinds and ("smtp", client) in kinds
        nats_spans = [s for s in mine if s.attributes.get("messaging.system") == "nats"]
        assert {s.kind for s in nats_spans} >= {producer, consumer}
        assert any(s.attributes.get("smtp.reply_code") == 250 for s in mine if s.kind == client)
        assert all("mailbus.queue_id" in s.attributes for s in mine if s.kind == consumer)
