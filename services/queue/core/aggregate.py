"""A message's delivery state: a pure fold over its events, never stored on its own.

`apply` is total and idempotent: an event already reflected in the state, a
result for a job the state does not know, or a result for a recipient that is
already final returns the state unchanged. That is what lets the queue rebuild
a message from the stream at any time and survive redelivered inputs.

Transitions per recipient (one place, as data):

    pending   --DeliveryScheduled-->  scheduled(job_id, attempt)
    scheduled --DeliverySucceeded-->  delivered   (final)
    scheduled --DeliveryFailed----->  failed      (final)
    scheduled --DeliveryDeferred--->  deferred    (waits for a retry: next_attempt_at)
    deferred  --DeliveryScheduled-->  scheduled(new job_id, attempt + 1)

The first result of a job for a recipient wins: it is also what JetStream keeps,
because result event ids are derived from (job_id, recipient index).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from libs.common.events import (
    DeliveryDeferred,
    DeliveryFailed,
    DeliveryScheduled,
    DeliverySucceeded,
    Destination,
    Event,
    MessageCompleted,
    MessageReceived,
)

RecipientStatus = Literal["pending", "scheduled", "delivered", "deferred", "failed"]
FINAL: frozenset[RecipientStatus] = frozenset({"delivered", "failed"})

DeliveryResult = DeliverySucceeded | DeliveryDeferred | DeliveryFailed

# Which recipient status each result type leads to, from "scheduled".
RESULT_STATUS: dict[str, RecipientStatus] = {
    "DeliverySucceeded": "delivered",
    "DeliveryDeferred": "deferred",
    "DeliveryFailed": "failed",
}
# Statuses a result may move a recipient out of (only for the job it is scheduled on).
ACCEPTS_RESULT: frozenset[RecipientStatus] = frozenset({"scheduled"})
# Statuses a new DeliveryScheduled may move a recipient out of.
SCHEDULABLE: frozenset[RecipientStatus] = frozenset({"pending", "deferred"})


@dataclass(frozen=True)
class RecipientState:
    address: str
    status: RecipientStatus = "pending"
    job_id: str | None = None
    attempt: int = 0
    reply_code: int = 0
    reply_status: str = ""
    reply_text: str = ""
    # When the next attempt of a deferred recipient is due (set by the retry timer, later).
    next_attempt_at: datetime | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL


@dataclass(frozen=True)
class JobRecord:
    job_id: str
    attempt: int
    destination: Destination
    recipients: tuple[str, ...]


@dataclass(frozen=True)
class MessageState:
    queue_id: str = ""
    received: MessageReceived | None = None
    recipients: tuple[RecipientState, ...] = ()
    jobs: tuple[JobRecord, ...] = ()
    completed: bool = False

    @property
    def known(self) -> bool:
        return self.received is not None

    @property
    def all_final(self) -> bool:
        return self.known and all(r.final for r in self.recipients)

    def recipient(self, address: str) -> RecipientState | None:
        return next((r for r in self.recipients if r.address == address), None)

    def job(self, job_id: str) -> JobRecord | None:
        return next((j for j in self.jobs if j.job_id == job_id), None)

    def addresses(self, status: RecipientStatus) -> tuple[str, ...]:
        return tuple(r.address for r in self.recipients if r.status == status)

    @property
    def max_attempt(self) -> int:
        return max((j.attempt for j in self.jobs), default=0)


EMPTY = MessageState()


def _unique(addresses: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(addresses))


def _received(state: MessageState, event: MessageReceived) -> MessageState:
    if state.known:
        return state
    addresses = _unique(r.address for r in event.recipients)
    return replace(
        state,
        received=event,
        recipients=tuple(RecipientState(address=a) for a in addresses),
    )


def _scheduled(state: MessageState, event: DeliveryScheduled) -> MessageState:
    if state.job(event.job_id) is not None:
        return state
    record = JobRecord(event.job_id, event.attempt, event.destination, tuple(event.recipients))
    targets = set(event.recipients)
    recipients = tuple(
        replace(
            r, status="scheduled", job_id=event.job_id, attempt=event.attempt, next_attempt_at=None
        )
        if r.address in targets and r.status in SCHEDULABLE
        else r
        for r in state.recipients
    )
    return replace(state, jobs=(*state.jobs, record), recipients=recipients)


def _result(state: MessageState, event: DeliveryResult) -> MessageState:
    current = state.recipient(event.recipient)
    if current is None or current.status not in ACCEPTS_RESULT or current.job_id != event.job_id:
        return state
    updated = replace(
        current,
        status=RESULT_STATUS[event.type],
        reply_code=event.reply_code,
        reply_status=event.status,
        reply_text=event.reply_text,
    )
    return replace(
        state,
        recipients=tuple(updated if r is current else r for r in state.recipients),
    )


def apply(state: MessageState, event: Event) -> MessageState:
    if not state.queue_id:
        state = replace(state, queue_id=event.queue_id)
    elif event.queue_id != state.queue_id:
        return state
    if isinstance(event, MessageReceived):
        return _received(state, event)
    if isinstance(event, DeliveryScheduled):
        return _scheduled(state, event)
    if isinstance(event, DeliverySucceeded | DeliveryDeferred | DeliveryFailed):
        return _result(state, event)
    if isinstance(event, MessageCompleted):
        return state if state.completed else replace(state, completed=True)
    # MessageDelayed, MessageExpired and future types do not change delivery state yet.
    return state


def fold(events: Iterable[Event], initial: MessageState = EMPTY) -> MessageState:
    state = initial
    for event in events:
        state = apply(state, event)
    return state
