"""The queue's durable pull consumer on MAILBUS_EVENTS and how it is fetched."""

from __future__ import annotations

from libs.common.contract import subjects
from libs.common.contract.events import EVENT_TYPES
from libs.common.runtime.consumers import DurableConsumer, FetchSettings
from services.queue.core.decide import OUT_EVENT_TYPES
from services.queue.core.transitions import Input

# The inputs of the queue: every event type its transitions table takes, less those it
# writes itself (it does not read its own outputs back): a new message, the delivery
# results, the notifier's answers and the operator's commands.
_EVENT_NAMES = frozenset(t.__name__ for t in EVENT_TYPES)
_OWN_OUTPUTS = frozenset(t.__name__ for t in OUT_EVENT_TYPES)
INPUT_TYPES = tuple(
    i.value for i in Input if i.value in _EVENT_NAMES and i.value not in _OWN_OUTPUTS
)

QUEUE_ACK_WAIT_S = 8.0
_DESCRIPTION = "queue: new messages, delivery results, report answers, operator commands"


def events_consumer(partition: int) -> DurableConsumer:
    """The inputs of one partition: read only by the replica holding its lease."""
    return DurableConsumer(
        stream=subjects.EVENTS_STREAM,
        name=subjects.queue_consumer(partition),
        description=f"{_DESCRIPTION} (partition {partition})",
        filters=tuple(subjects.events_of_type(t, partition) for t in INPUT_TYPES),
        # What a killed queue had fetched comes back this soon to its successor (which
        # takes the lease at once); an input handled twice decides the same, so a slow
        # one costs only work.
        ack_wait=QUEUE_ACK_WAIT_S,
        max_ack_pending=1_000,
    )


# The single consumer of the versions before partitions, on the old subject shape (no
# partition token): kept so that inputs written before the upgrade are still processed.
# Every replica reads it and handles what falls in its own partitions.
LEGACY_EVENTS_CONSUMER = DurableConsumer(
    stream=subjects.EVENTS_STREAM,
    name=subjects.QUEUE_CONSUMER,
    description=f"{_DESCRIPTION} (written before partitions)",
    filters=tuple(subjects.legacy_events_of_type(t) for t in INPUT_TYPES),
    ack_wait=QUEUE_ACK_WAIT_S,
    max_ack_pending=1_000,
)

# Handlers serialize per queue id, so inputs are handled as they come (the continuous
# pull of runtime/pull.py, a window of 64); the fired timers' consumers the same way. A
# replica owning every partition reads 34 consumers (two per partition, two of the old
# shape): each request waits up to 5 s on the server, so an idle queue costs a few pull
# requests a second, not dozens, and a waiting request delays no message (the server
# answers as soon as one comes). A stop, or a partition handed back, ends the pull at
# once and gives back what arrived too late to start.
FETCH = FetchSettings(batch=64, timeout=5.0)
