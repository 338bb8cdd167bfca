"""The queue's in-memory index of the messages it holds, for `mailbus queue list`.

Nothing scans it to find due work (timers do that); it only answers operators.
It holds the messages of the partitions this replica owns: when it takes partitions
over it reads their events from MAILBUS_EVENTS once from the beginning and folds
every message; after that, every processed input updates it, and a partition given
back is dropped from it. The stream stays the truth: losing the index loses nothing
but a take-over's time.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection
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

    def drop_partitions(self, partitions: Collection[int]) -> None:
        """Forget the messages of partitions given back (their new owner lists them)."""
        gone = [q for q in self._entries if subjects.partition_of(q) in partitions]
        for queue_id in gone:
            del self._entries[queue_id]

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


def _filters(partitions: Collection[int]) -> list[str]:
    """The events of these partitions, in both shapes: all of the stream when they are
    all of the partitions; else each one's, and the events written before partitions
    (which carry no partition token: the fold keeps only the messages asked for)."""
    if set(partitions) >= set(range(subjects.QUEUE_PARTITIONS)):
        return [subjects.EVENTS_SUBJECTS]
    return [subjects.LEGACY_MESSAGE_EVENTS] + [
        subjects.events_of_type("*", p) for p in sorted(partitions)
    ]


async def read_all_states(js: JetStreamContext) -> dict[str, MessageState]:
    """Every message in MAILBUS_EVENTS, folded (a replica owning every partition)."""
    last = (await js.stream_info(subjects.EVENTS_STREAM)).state.last_seq
    return await read_states(js, range(subjects.QUEUE_PARTITIONS), last)


async def read_states(
    js: JetStreamContext, partitions: Collection[int], last: int
) -> dict[str, MessageState]:
    """Fold every message of `partitions` in MAILBUS_EVENTS up to sequence `last`.

    Messages that left the queue with every report answered are dropped on the way,
    so memory follows the queue's size, not the log's.
    """
    wanted = set(partitions)
    states: dict[str, MessageState] = {}
    if last == 0 or not wanted:
        return states
    filters = _filters(wanted)
    sub = await js.subscribe(
        filters[0],
        stream=subjects.EVENTS_STREAM,
        ordered_consumer=True,
        deliver_policy=api.DeliverPolicy.ALL,
        config=api.ConsumerConfig(filter_subjects=filters) if len(filters) > 1 else None,
    )
    try:
        info = await sub.consumer_info()
        delivered = info.delivered.stream_seq if info.delivered is not None else 0
        if not info.num_pending and not delivered and sub.pending_msgs == 0:
            return states  # nothing on these subjects
        while True:
            msg = await sub.next_msg(timeout=READ_TIMEOUT_S)
            meta = msg.metadata
            if meta.sequence.stream > last:
                break  # written after the read began: the consumers bring it
            _fold_into(states, msg.data, wanted)
            if meta.sequence.stream >= last or meta.num_pending == 0:
                break
    except (TimeoutError, NotFoundError) as exc:
        # The tail was purged or deleted under us: what we have is what there is.
        log.warning("queue: index read stopped early: %r", exc)
    finally:
        await sub.unsubscribe()
    return states


def _fold_into(states: dict[str, MessageState], data: bytes, partitions: set[int]) -> None:
    try:
        event = parse_event(data)
    except ValidationError:
        return  # a type this version does not know, or an epoch marker
    qid = event.queue_id
    if subjects.partition_of(qid) not in partitions:
        return
    state = apply(states.get(qid, MessageState()), event)
    if state.done and state.reports_answered:
        states.pop(qid, None)
    elif state.known:
        states[qid] = state
