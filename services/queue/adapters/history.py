"""Read one message's whole event history back from MAILBUS_EVENTS.

The stream is the source of truth; the queue's cache is only a shortcut, so
whenever the cache misses, the state is folded from what this returns.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from libs.common import subjects
from libs.common.events import AnyEvent, parse_event

log = logging.getLogger(__name__)

# A message has a handful of events per attempt; this only stops a runaway loop.
MAX_EVENTS = 100_000


async def load_history(js: JetStreamContext, queue_id: str) -> list[AnyEvent]:
    """Every event of `queue_id`, in stream order (one "next by subject" read each)."""
    pattern = subjects.message_events_filter(queue_id)
    history: list[AnyEvent] = []
    seq = 1
    for _ in range(MAX_EVENTS):
        try:
            raw = await js.get_msg(subjects.EVENTS_STREAM, seq=seq, subject=pattern, next=True)
        except NotFoundError:
            return history
        if raw.seq is None:
            return history
        seq = raw.seq + 1
        try:
            history.append(parse_event(raw.data or b""))
        except ValidationError as exc:
            # An event type this version does not know: it cannot change our decisions.
            log.warning("queue %s: skipping unreadable event at seq %s: %s", queue_id, raw.seq, exc)
    raise RuntimeError(f"queue {queue_id}: more than {MAX_EVENTS} events")
