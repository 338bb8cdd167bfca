"""Read one message's events back from MAILBUS_EVENTS.

The stream is the source of truth: the queue folds a message's state from this
when its cache misses, and other services read what they need of a message here.
Each read is a "next message on this subject filter" direct get, so reading a
message costs one round trip per event and never a consumer.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from libs.common import subjects
from libs.common.events import AnyEvent, MessageReceived, parse_event

log = logging.getLogger(__name__)

# A message has a handful of events per attempt; this only stops a runaway loop.
MAX_EVENTS = 100_000


async def message_history(js: JetStreamContext, queue_id: str) -> list[AnyEvent]:
    """Every event of `queue_id` this version can read, in stream order."""
    pattern = subjects.message_events_filter(queue_id)
    found: list[AnyEvent] = []
    seq = 1
    for _ in range(MAX_EVENTS):
        try:
            raw = await js.get_msg(subjects.EVENTS_STREAM, seq=seq, subject=pattern, next=True)
        except NotFoundError:
            return found
        if raw.seq is None:
            return found
        seq = raw.seq + 1
        try:
            found.append(parse_event(raw.data or b""))
        except ValidationError as exc:
            # A type from a newer version: whoever reads history here cannot act on it.
            log.warning("%s: skipping unreadable event at seq %s: %s", queue_id, raw.seq, exc)
    raise RuntimeError(f"{queue_id}: more than {MAX_EVENTS} events")


async def message_received(js: JetStreamContext, queue_id: str) -> MessageReceived | None:
    """The message's MessageReceived, or None when the stream does not hold it."""
    subject = subjects.event_subject(queue_id, "MessageReceived")
    try:
        raw = await js.get_msg(subjects.EVENTS_STREAM, seq=1, subject=subject, next=True)
    except NotFoundError:
        return None
    event = parse_event(raw.data or b"")
    return event if isinstance(event, MessageReceived) else None
