"""Every Prometheus metric mailbus exports, in one place.

Names follow the Postfix and Exim exporters' habits (`<mta>_<daemon>_<what>_<unit>`)
with units in the name, so existing dashboards translate. Each process only
touches its own service's metrics; all are declared here so operators can read
one file to know what exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from datetime import datetime

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

# ingress (smtpd)
SMTPD_CONNECTIONS = Counter(
    "mailbus_smtpd_connections_total", "SMTP connections accepted", ["listener"]
)
SMTPD_SESSIONS_ACTIVE = Gauge(
    "mailbus_smtpd_sessions_active", "SMTP sessions open now", ["listener"]
)
SMTPD_MESSAGES_ACCEPTED = Counter(
    "mailbus_smtpd_messages_accepted_total", "Messages acknowledged with 250", ["listener"]
)
SMTPD_MESSAGE_BYTES = Counter(
    "mailbus_smtpd_message_bytes_total", "Bytes of accepted messages", ["listener"]
)
SMTPD_REFUSALS = Counter(
    "mailbus_smtpd_refusals_total",
    "Refused SMTP commands by stage and the policy rule that refused",
    ["stage", "rule"],
)

# policy
POLICY_DECISIONS = Counter(
    "mailbus_policy_decisions_total", "Policy decisions", ["stage", "action", "rule"]
)
POLICY_DECISION_SECONDS = Histogram(
    "mailbus_policy_decision_duration_seconds",
    "Time policy took to answer, by stage",
    ["stage"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

# queue (qmgr): mailbus_qmgr_messages{state} and mailbus_qmgr_oldest_message_age_seconds
# come from QueueStatsCollector, read from the queue's index at scrape time.
QUEUE_EVENTS = Counter(
    "mailbus_qmgr_events_processed_total", "Events the queue consumed, by type", ["type"]
)
QUEUE_ORPHAN_BODIES = Counter(
    "mailbus_qmgr_orphan_bodies_removed_total",
    "Stored bodies no MessageReceived referred to, removed after the grace period",
)

# delivery (smtp client)
DELIVERY_ATTEMPTS = Counter(
    "mailbus_smtp_delivery_attempts_total",
    "Per-recipient delivery outcomes",
    ["destination", "result"],
)
DELIVERY_SECONDS = Histogram(
    "mailbus_smtp_delivery_duration_seconds",
    "Time of one delivery job, connection to last reply",
    ["destination"],
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)

# notifier (bounce)
REPORTS_SENT = Counter("mailbus_bounce_reports_sent_total", "Delivery reports sent", ["kind"])

# every consumer
CONSUMER_PENDING = Gauge(
    "mailbus_jetstream_consumer_pending_messages",
    "Messages waiting for a JetStream consumer (lag)",
    ["stream", "consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "mailbus_jetstream_consumer_ack_pending_messages",
    "Messages delivered to a consumer and not yet acknowledged",
    ["stream", "consumer"],
)


QueueStats = Callable[[], tuple[Mapping[str, int], datetime | None]]


class QueueStatsCollector(Collector):
    """Queue size by state and the oldest arrival, computed when Prometheus scrapes:
    nothing is maintained on the hot path for it."""

    STATES = ("active", "deferred", "held")

    def __init__(self, stats: QueueStats) -> None:
        self._stats = stats

    def collect(self) -> Iterator[GaugeMetricFamily]:
        counts, oldest = self._stats()
        by_state = GaugeMetricFamily(
            "mailbus_qmgr_messages", "Messages in the queue by state", labels=["state"]
        )
        for state in sorted(set(self.STATES) | set(counts)):
            by_state.add_metric([state], counts.get(state, 0))
        yield by_state
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest.timestamp())
        yield GaugeMetricFamily(
            "mailbus_qmgr_oldest_message_age_seconds",
            "Age of the oldest message still in the queue",
            value=age,
        )


def register_queue_stats(stats: QueueStats) -> QueueStatsCollector:
    collector = QueueStatsCollector(stats)
    REGISTRY.register(collector)
    return collector


def unregister(collector: Collector) -> None:
    try:
        REGISTRY.unregister(collector)
    except KeyError:
        pass
