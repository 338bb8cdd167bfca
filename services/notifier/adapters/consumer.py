"""The notifier's durable pull consumer: the four report-triggering event types."""

from __future__ import annotations

from libs.common.contract import subjects
from libs.common.runtime.consumers import DurableConsumer, FetchSettings
from services.notifier.core import TRIGGER_TYPES

TRIGGERS_CONSUMER = DurableConsumer(
    stream=subjects.EVENTS_STREAM,
    name=subjects.NOTIFIER_CONSUMER,
    description="notifier: failures, delays, expiries and requested successes",
    # Both subject shapes: what an older queue wrote before the upgrade still gets a report.
    filters=tuple(subjects.events_of_type(t) for t in TRIGGER_TYPES)
    + tuple(subjects.legacy_events_of_type(t) for t in TRIGGER_TYPES),
    ack_wait=60.0,  # a report reads a body and writes one: allow a slow store
    max_ack_pending=256,
)

FETCH = FetchSettings(batch=16)
