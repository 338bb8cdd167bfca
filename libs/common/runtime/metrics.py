"""Every Prometheus metric mailbus exports, in one place.

Names follow the Postfix and Exim exporters' habits (`<mta>_<daemon>_<what>_<unit>`)
with units in the name, so existing dashboards translate. Each process only
touches its own service's metrics; all are declared here so operators can read
one file to know what exists.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
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
# postfix_exporter's smtpd_messages_rejected_total{code}: the same refusals by reply code.
SMTPD_REJECTED_BY_CODE = Counter(
    "mailbus_smtpd_messages_rejected_total",
    "Refused SMTP commands by reply code",
    ["code"],
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

# queue (qmgr): mailbus_qmgr_messages{state}, mailbus_qmgr_oldest_message_age_seconds and
# mailbus_qmgr_message_age_seconds{state} come from QueueStatsCollector, read from the
# queue's index at scrape time.
# postfix_exporter's smtp_delivery_delay_seconds{status}: arrival to each recipient's
# outcome, observed by the queue (it knows the arrival) as the mail log's delay=.
DELIVERY_DELAY = Histogram(
    "mailbus_smtp_delivery_delay_seconds",
    "Time from arrival to a recipient's outcome (the mail log's delay=), by status",
    ["status"],
    buckets=(0.1, 0.5, 1, 5, 10, 60, 300, 1800, 3600, 4 * 3600, 86400, 5 * 86400),
)
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
# Every message in the queue: its state and arrival.
QueueAges = Callable[[], Iterable[tuple[str, datetime]]]
# postfix_exporter's showq_message_age_seconds buckets, up to 11 days (a queue lifetime).
AGE_BUCKETS = (10.0, 100.0, 1e3, 1e4, 1e5, 1e6)


class QueueStatsCollector(Collector):
    """Queue size by state and the oldest arrival, computed when Prometheus scrapes:
    nothing is maintained on the hot path for it."""

    STATES = ("active", "deferred", "held")

    def __init__(self, stats: QueueStats, ages: QueueAges | None = None) -> None:
        self._stats = stats
        self._ages = ages

    def collect(self) -> Iterator[Metric]:
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
        if self._ages is not None:
            yield self._age_histogram(self._ages())

    def _age_histogram(self, ages: Iterable[tuple[str, datetime]]) -> HistogramMetricFamily:
        now = time.time()
        by_state: dict[str, list[float]] = {state: [] for state in self.STATES}
        for state, arrival in ages:
            by_state.setdefault(state, []).append(max(0.0, now - arrival.timestamp()))
        family = HistogramMetricFamily(
            "mailbus_qmgr_message_age_seconds",
            "Age of the messages in the queue, by state",
            labels=["state"],
        )
        for state in sorted(by_state):
            values = by_state[state]
            buckets = [(repr(le), sum(v <= le for v in values)) for le in AGE_BUCKETS]
            family.add_metric([state], [*buckets, ("+Inf", len(values))], sum_value=sum(values))
        return family


def register_queue_stats(stats: QueueStats, ages: QueueAges | None = None) -> QueueStatsCollector:
    collector = QueueStatsCollector(stats, ages)
    REGISTRY.register(collector)
    return collector


def unregister(collector: Collector) -> None:
    try:
        REGISTRY.unregister(collector)
    except KeyError:
        pass
