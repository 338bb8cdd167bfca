"""The queue's in-memory index of the messages it holds, for `mailbus queue list`.

Nothing scans it to find due work (timers do that); it only answers operators.
At start it is rebuilt by reading MAILBUS_EVENTS once from the beginning and
folding every message; after that, every processed input updates it. The
stream stays the truth: losing the index loses nothing but a restart's time.
"""

from __future__ import annotations

import logging
from collections import Counter
from datetime import datetime

from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from libs.common.contract import subjects
from libs.common.contract.events import parse_event
from services.queue.core import MessageState, QueueEntry, Timing, apply, summarize

log = logging.getLogger(__name__)

READ_TIMEOUT_S = 5.0


class QueueIndex:
    def __init__(self, timing: Timing) -> None:
        self._timing = timing
        self._entries: dict[str, QueueEntry] = {}

    def update(self, state: MessageState) -> None:
        entry = summarize(state, self._timing)
        if entry is None:
            self._entries.pop(state.queue_id, None)
        else:
            self._entries[state.queue_id] = entry

    def get(self, queue_id: str) -> QueueEntry | None:
        return self._entries.get(queue_id)

    def entries(self) -> list[QueueEntry]:
        return sorted(self._entries.values(), key=lambda e: (e.arrival, e.queue_id))

    def __len__(self) -> int:
        return len(self._entries)

    def stats(self) -> tuple[dict[str, int], datetime | None]:
        """Messages per state and the oldest arrival, for the metrics scrape."""
        counts: Counter[str] = Counter(e.state for e in self._entries.values())
        oldest = min((e.arrival for e in self._entries.values()), default=None)
        return dict(counts), oldest

    def ages(self) -> list[tuple[str, datetime]]:
        """Each message's state and arrival, for the age histogram at scrape time."""
        return [(e.state, e.arrival) for e in self._entries.values()]


async def read_all_states(js: JetStreamContext) -> dict[str, MessageState]:
    """Fold every message in MAILBUS_EVENTS up to its last event at call time.

    Messages that left the queue with every report answered are dropped on the way,
    so memory follows the queue's size, not the log's.
    """
    info = await js.stream_info(subjects.EVENTS_STREAM)
    last = info.state.last_seq
    states: dict[str, MessageState] = {}
    if info.state.messages == 0:
        return states
    sub = await js.subscribe(
        subjects.EVENTS_SUBJECTS,
        stream=subjects.EVENTS_STREAM,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.ALL,
    )
    try:
        while True:
            msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            try:
                event = parse_event(msg.data)
            except ValidationError:
                event = None  # a type this version does not know
            if event is not None:
                state = apply(states.get(event.queue_id, MessageState()), event)
                if state.done and state.reports_answered:
                    states.pop(event.queue_id, None)
                elif state.known:
                    states[event.queue_id] = state
            if msg.metadata.sequence.stream >= last:
                break
    except (TimeoutError, NotFoundError) as exc:
        # The tail was purged or deleted under us: what we have is what there is.
        log.warning("queue: index read stopped early: %r", exc)
    finally:
        await sub.unsubscribe()
    return states
