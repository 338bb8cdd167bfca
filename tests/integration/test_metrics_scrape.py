"""Metrics for operators: a scrape of every process of `mailbus up` after mail went
through shows what happened, in counts an operator can alert on."""

from __future__ import annotations

import asyncio
import signal
import smtplib
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from libs.common import subjects
from libs.common.embedded_nats import free_port
from tests.support.sink import Sink
from tests.support.streams import eventually

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
    sink, sink_port = sink_factory(replies={"gone@remote.test": "550 5.1.1 No such user"})
    smtp_port, metrics_port = free_port(), free_port()
    port = {svc: metrics_port + i for i, svc in enumerate(subjects.SERVICES)}
    cfg = tmp_path / "mailbus.yaml"
    cfg.write_text(
        "server: {hostname: mx.metrics.test, local_domains: [metrics.test]}\n"
        "listeners:\n"
        f"  - {{name: smtp, protocol: smtp, address: '127.0.0.1:{smtp_port}', tls: none}}\n"
        "ip_groups: {lan: [127.0.0.0/8]}\n"
        "relay: {allowed_ip_group: lan}\n"
        "security: {require_sender_domain_dns: false}\n"
        "antispam: {spf: false}\n"
        "delivery:\n"
        f"  {{mode: relay, relay_host: {{host: 127.0.0.1, port: {sink_port}}}, tls: none}}\n"
        f"telemetry: {{metrics_address: '127.0.0.1:{metrics_port}'}}\n"
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "libs.common.cli", "up", "--config", str(cfg),
        "--data-dir", str(tmp_path / "var"),
        cwd=ROOT, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    assert proc.stdout is not None
    drain: asyncio.Task[bytes] | None = None
    try:
        async with asyncio.timeout(90):
            while b"ready:" not in (line := await proc.stdout.readline()):
                assert line, "mailbus up exited early"
        drain = asyncio.create_task(proc.stdout.read())

        def send() -> None:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as client:
                client.sendmail(
                    "a@sender.test",
                    ["ok@remote.test", "gone@remote.test"],
                    b"Subject: m\r\n\r\nhi\r\n",
                )

        await asyncio.to_thread(send)
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
        assert (
            value(
                policy,
                "mailbus_policy_decisions_total",
                stage="rcpt",
                action="accept",
                rule="allowed_ip_group",
            )
            == 2
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
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
            async with asyncio.timeout(15):
                await proc.wait()
        if drain is not None:
            drain.cancel()


async def _now(value: bool) -> bool:
    return value
