"""Metrics for operators: a scrape of every process of `mailbus up` after mail went
through shows what happened, in counts an operator can alert on."""

from __future__ import annotations

import asyncio
import smtplib
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from libs.common.contract import subjects
from libs.common.runtime.embedded_nats import free_port
from tests.support.sink import Sink
from tests.support.streams import eventually
from tests.support.up import mailbus_up, relay_config

ROOT = Path(__file__).resolve().parents[2]

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    out: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_scrape_after_mail_shows_the_counts(
    tmp_path: Path, sink_factory: Callable[..., tuple[Sink, int]]
) -> None:
    sink, sink_port = sink_factory(
        replies={
            "gone@remote.test": "550 5.1.1 No such user",
            "later@remote.test": "451 4.3.0 Try again later",
        }
    )
    smtp_port, metrics_port = free_port(), free_port()
    port = {svc: metrics_port + i for i, svc in enumerate(subjects.SERVICES)}
    extra = f"telemetry: {{metrics_address: '127.0.0.1:{metrics_port}'}}\n"
    async with mailbus_up(tmp_path, relay_config("mx.metrics.test", smtp_port, sink_port, extra)):

        def send() -> dict[str, tuple[int, bytes]]:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
                return client.sendmail(
                    "a@sender.test",
                    [
                        "ok@remote.test",
                        "gone@remote.test",
                        "later@remote.test",
                        "nobody@metrics.test",
                    ],
                    b"Subject: m\r\n\r\nhi\r\n",
                )

        refused = await asyncio.to_thread(send)
        assert list(refused) == ["nobody@metrics.test"], refused
        code = refused["nobody@metrics.test"][0]
        # The original to ok@, then the failure report for gone@ back to a@ (relayed too).
        await eventually(lambda: _now(len(sink.received) >= 2), "both messages at the sink", 30)

        async with asyncio.timeout(15):
            while True:
                got = {svc: await asyncio.to_thread(scrape, p) for svc, p in port.items()}
                if value(got["notifier"], "mailbus_bounce_reports_sent_total", kind="failure"):
                    break
                await asyncio.sleep(0.2)
        ingress, policy, queue = got["ingress"], got["policy"], got["queue"]
        delivery, notifier = got["delivery"], got["notifier"]
        assert value(ingress, "mailbus_smtpd_messages_accepted_total", listener="smtp") == 1
        assert value(ingress, "mailbus_smtpd_connections_total", listener="smtp") >= 1
        # postfix_exporter's smtpd_messages_rejected_total{code}: the unknown local user.
        assert value(ingress, "mailbus_smtpd_messages_rejected_total", code=str(code)) == 1
        assert (
            value(
                policy,
                "mailbus_policy_decisions_total",
                stage="rcpt",
                action="accept",
                rule="allowed_ip_group",
            )
            == 3  # ok@, gone@ and later@
        )
        assert value(queue, "mailbus_qmgr_events_processed_total", type="MessageReceived") == 2
        assert ("mailbus_qmgr_messages", (("state", "deferred"),)) in queue
        assert (
            "mailbus_jetstream_consumer_pending_messages",
            (("consumer", "queue"), ("stream", "MAILBUS_EVENTS")),
        ) in queue
        delivered = value(
            delivery,
            "mailbus_smtp_delivery_attempts_total",
            destination="relay",
            result="delivered",
        )
        assert delivered == 2  # the original to ok@ and the report to a@
        failed = value(
            delivery, "mailbus_smtp_delivery_attempts_total", destination="relay", result="failed"
        )
        assert failed == 1
        assert value(notifier, "mailbus_bounce_reports_sent_total", kind="failure") == 1
        # postfix_exporter's smtp_delivery_delay_seconds{status}: arrival to each outcome.
        delay = "mailbus_smtp_delivery_delay_seconds"
        assert value(queue, f"{delay}_count", status="sent") == 2
        assert value(queue, f"{delay}_count", status="bounced") == 1
        assert value(queue, f"{delay}_count", status="deferred") >= 1
        assert 0 < value(queue, f"{delay}_sum", status="sent") < 30
        # showq_message_age_seconds{queue}: the message waiting for later@ is deferred.
        age = "mailbus_qmgr_message_age_seconds"
        assert value(queue, f"{age}_count", state="deferred") == 1
        assert value(queue, f"{age}_bucket", state="deferred", le="+Inf") == 1
        assert value(queue, f"{age}_bucket", state="deferred", le="100.0") == 1
        assert value(queue, f"{age}_count", state="held") == 0
        assert 0 < value(queue, f"{age}_sum", state="deferred") < 100


async def _now(value: bool) -> bool:
    return value
