"""Read one message's events back from MAILBUS_EVENTS.

The stream is the source of truth: the queue folds a message's state from this
when its cache misses, and other services read what they need of a message here.
Each read is a "next message on this subject filter" direct get, so reading a
message costs one round trip per event and never a consumer.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Iterator

from nats.js import JetStreamContext
from nats.js.api import RawStreamMsg
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from libs.common.contract import subjects
from libs.common.contract.events import (
    AnyEvent,
    DeliveryAttempted,
    DeliveryFailed,
    DeliverySucceeded,
    Event,
    MessageCompleted,
    MessageDeleted,
    MessageExpired,
    MessageReceived,
    parse_event,
)

log = logging.getLogger(__name__)

# A message has a handful of events per attempt; this only stops a runaway loop.
MAX_EVENTS = 100_000


async def by_subject(
    js: JetStreamContext, stream: str, subject: str, limit: int
) -> AsyncIterator[RawStreamMsg]:
    """The messages on `subject` (wildcards allowed) in `stream`, oldest first, `limit` at
    most: one "next message on this subject" direct get each."""
    seq = 1
    for _ in range(limit):
        try:
            raw = await js.get_msg(stream, seq=seq, subject=subject, next=True)
        except NotFoundError:
            return
        if raw.seq is None:
            return
        yield raw
        seq = raw.seq + 1


async def message_history(js: JetStreamContext, queue_id: str) -> list[AnyEvent]:
    """Every event of `queue_id` this version can read, in stream order."""
    pattern = subjects.message_events_filter(queue_id)
    found: list[AnyEvent] = []
    read = 0
    async for raw in by_subject(js, subjects.EVENTS_STREAM, pattern, MAX_EVENTS):
        read += 1
        try:
            found.append(parse_event(raw.data or b""))
        except ValidationError as exc:
            # A type from a newer version: whoever reads history here cannot act on it.
            log.warning("%s: skipping unreadable event at seq %s: %s", queue_id, raw.seq, exc)
    if read >= MAX_EVENTS:
        raise RuntimeError(f"{queue_id}: {MAX_EVENTS} events or more")
    return found


async def message_received(js: JetStreamContext, queue_id: str) -> MessageReceived | None:
    """The message's MessageReceived, or None when the stream does not hold it."""
    # A message's first event is its MessageReceived; this filter finds it whether it
    # was written with a partition token or before (subjects.message_events_filter).
    subject = subjects.message_events_filter(queue_id)
    first = [raw async for raw in by_subject(js, subjects.EVENTS_STREAM, subject, 1)]
    if not first:
        return None
    event = parse_event(first[0].data or b"")
    return event if isinstance(event, MessageReceived) else None


def _each_result(events: list[AnyEvent]) -> Iterator[Event]:
    """The events with a job's results (DeliveryAttempted) as one event per recipient."""
    for event in events:
        if isinstance(event, DeliveryAttempted):
            yield from event.per_recipient()
        else:
            yield event


def left_queue(events: list[AnyEvent]) -> bool:
    """Whether these events say the message has left the queue: deleted, or every
    recipient final. The queue writes no event for a completion (its fold sees it),
    so this reads it the same way, from the results; older histories say it with a
    MessageCompleted. For readers other than the queue, which folds it exactly."""
    waiting: set[str] = set()
    for event in _each_result(events):
        if isinstance(event, MessageDeleted | MessageCompleted):
            return True
        if isinstance(event, MessageReceived):
            waiting = {r.address for r in event.recipients}
        elif isinstance(event, DeliverySucceeded | DeliveryFailed):
            waiting.discard(event.recipient)
        elif isinstance(event, MessageExpired):
            waiting -= set(event.recipients)
    return any(isinstance(e, MessageReceived) for e in events) and not waiting
