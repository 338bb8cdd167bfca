"""The queue's durable pull consumer on MAILBUS_EVENTS and how it is fetched."""

from __future__ import annotations

from libs.common.contract import subjects
from libs.common.runtime.consumers import DurableConsumer, FetchSettings

# The inputs of the queue: a new message, the delivery results, the notifier's answers
# and the operator's commands. What the queue publishes itself is not read back.
INPUT_TYPES = (
    "MessageReceived",
    "DeliverySucceeded",
    "DeliveryDeferred",
    "DeliveryFailed",
    "ReportSent",
    "MessageHeld",
    "MessageReleased",
    "MessageDeleted",
)

EVENTS_CONSUMER = DurableConsumer(
    stream=subjects.EVENTS_STREAM,
    name=subjects.QUEUE_CONSUMER,
    description="queue: new messages, delivery results, report answers, operator commands",
    filters=tuple(subjects.events_of_type(t) for t in INPUT_TYPES),
    ack_wait=30.0,
    max_ack_pending=1_000,
)

# Handlers serialize per queue id, so a whole batch is handled at once; the fired
# timers' consumer is fetched the same way.
FETCH = FetchSettings(batch=64)
