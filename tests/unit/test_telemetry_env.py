"""Telemetry as the OpenTelemetry SDK's own variables ask (OTEL_SERVICE_NAME,
OTEL_TRACES_SAMPLER, the OTLP protocol), and span names that stay bounded. Each case
runs in a process of its own: the tracer provider is set once per process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from libs.common.contract.subjects import subject_template

ROOT = Path(__file__).resolve().parents[2]
PROBE = """
import json
from opentelemetry import trace
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from libs.common.runtime.telemetry import producer_span, setup_telemetry
provider = setup_telemetry("queue")
memory = InMemorySpanExporter()
provider.add_span_processor(SimpleSpanProcessor(memory))
with producer_span("mailbus.evt.01ABC.MessageReceived", "01ABC.received"):
    pass
spans = memory.get_finished_spans()
print("PROBE", json.dumps({
    "service": provider.resource.attributes.get("service.name"),
    "sampler": provider.sampler.get_description(),
    "names": [s.name for s in spans],
    "attributes": [dict(s.attributes or {}) for s in spans],
}))
"""


def _probe(**env: str) -> dict[str, object]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    out = subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=ROOT,
        env={**clean, "OTEL_TRACES_EXPORTER": "console", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    line = next(line for line in out.splitlines() if line.startswith("PROBE "))
    result: dict[str, object] = json.loads(line.removeprefix("PROBE "))
    return result


def test_defaults_name_the_service_and_template_the_span() -> None:
    found = _probe()
    assert found["service"] == "mailbus-queue"
    assert found["names"] == ["publish mailbus.evt.{queue_id}.MessageReceived"]
    attributes = found["attributes"]
    assert isinstance(attributes, list)
    assert attributes[0]["mailbus.queue_id"] == "01ABC"
    assert attributes[0]["messaging.destination.name"] == "mailbus.evt.01ABC.MessageReceived"


def test_the_sdk_variables_win() -> None:
    found = _probe(OTEL_SERVICE_NAME="mx1-queue", OTEL_TRACES_SAMPLER="always_off")
    assert found["service"] == "mx1-queue"
    assert "AlwaysOff" in str(found["sampler"]) and found["names"] == []
    found = _probe(OTEL_RESOURCE_ATTRIBUTES="service.name=from-attrs,team=mail")
    assert found["service"] == "from-attrs"


@pytest.mark.parametrize(
    ("subject", "template", "qid"),
    [
        ("mailbus.evt.Q1.DeliveryDeferred", "mailbus.evt.{queue_id}.DeliveryDeferred", "Q1"),
        ("mailbus.body.Q1.3", "mailbus.body.{queue_id}", "Q1"),
        ("mailbus.job.remote_test", "mailbus.job.{destination}", None),
        ("mailbus.timer.sched.Q1.retry", "mailbus.timer.sched.{queue_id}.retry", "Q1"),
        ("$KV.mailbus-connections.1_2_3_4.x.y", "$KV.mailbus-connections", None),
        ("mailbus.access.ClientBlocked", "mailbus.access.ClientBlocked", None),
    ],
)
def test_subject_templates(subject: str, template: str, qid: str | None) -> None:
    assert subject_template(subject) == (template, qid)
