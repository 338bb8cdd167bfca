"""A message's delivery state: a pure fold over its events, never stored on its own.

`apply` is total and idempotent: an event already reflected in the state, a
result for a job the state does not know, or a result for a recipient that is
already final returns the state unchanged. That is what lets the queue rebuild
a message from the stream at any time and survive redelivered inputs.

Transitions per recipient (one place, as data):

    pending   --DeliveryScheduled-->  scheduled(job_id, attempt)
    scheduled --DeliverySucceeded-->  delivered   (final)
    scheduled --DeliveryFailed----->  failed      (final)
    scheduled --DeliveryDeferred--->  deferred    (retried retry_interval after last_attempt_at)
    deferred  --DeliveryScheduled-->  scheduled(new job_id, attempt + 1)
    pending, deferred, scheduled --MessageExpired-->  failed (4.4.7, or 5.2.2 after a
                                                      mailbox-full deferral; final)

and per message: MessageHeld / MessageReleased toggle `held`, MessageCompleted
and MessageDeleted end it (`done`); the report-triggering events and their
ReportSent answers decide when the body may go.

The first result of a job for a recipient wins: it is also what JetStream keeps,
because result event ids are derived from (job_id, recipient index).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Literal

from libs.common.contract.events import (
    DeliveryDeferred,
    DeliveryFailed,
    DeliveryScheduled,
    DeliverySucceeded,
    Destination,
    Event,
    MessageCompleted,
    MessageDelayed,
    MessageDeleted,
    MessageExpired,
    MessageHeld,
    MessageReceived,
    MessageReleased,
    RecipientsDelivered,
    RecipientsFailed,
    ReportSent,
)

RecipientStatus = Literal["pending", "scheduled", "delivered", "deferred", "failed"]
FINAL: frozenset[RecipientStatus] = frozenset({"delivered", "failed"})

DeliveryResult = DeliverySucceeded | DeliveryDeferred | DeliveryFailed
ReportTrigger = MessageDelayed | MessageExpired | RecipientsFailed | RecipientsDelivered

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

EXPIRED_STATUS = "4.4.7"  # RFC 3463: delivery time expired
# Expiry statuses that say more than 4.4.7, by the last deferral's status: a mailbox that
# stayed full until bounce_after is reported as full, permanently (RFC 3463 X.2.2).
EXPIRED_AFTER: dict[str, str] = {"4.2.2": "5.2.2"}


@dataclass(frozen=True)
class RecipientState:
    address: str
    status: RecipientStatus = "pending"
    job_id: str | None = None
    attempt: int = 0
    reply_code: int = 0
    reply_status: str = ""
    reply_text: str = ""
    remote_host: str = ""
    # Time of the last result; a deferred recipient is due retry_interval after it.
    last_attempt_at: datetime | None = None
    expired: bool = False
    # Delivered to a server that offered DSN (RFC 3461), which took NOTIFY=SUCCESS over.
    remote_dsn: bool | None = None

    @property
    def final(self) -> bool:
        return self.status in FINAL

    @property
    def diagnostic(self) -> str:
        """The remote reply as a report shows it ("550 5.1.1 No such user")."""
        if self.reply_code:
            return f"{self.reply_code} {self.reply_text}".strip()
        return self.reply_text


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
    deleted: bool = False
    held: bool = False
    delayed: bool = False  # MessageDelayed is in the log
    # A recipient was deferred at least once: from then on the message has timers.
    ever_deferred: bool = False
    # Ids of the report-triggering events in the log, and of those answered by ReportSent.
    reports: tuple[str, ...] = ()
    answered: frozenset[str] = frozenset()
    # Recipients already covered by a report-triggering event.
    reported_failed: frozenset[str] = frozenset()
    reported_delivered: frozenset[str] = frozenset()
    # Operator commands already applied (hold and release may come and go several times).
    commands: frozenset[str] = frozenset()

    @property
    def known(self) -> bool:
        return self.received is not None

    @property
    def done(self) -> bool:
        """The message has left the queue (completed or deleted)."""
        return self.completed or self.deleted

    @property
    def all_final(self) -> bool:
        return self.known and all(r.final for r in self.recipients)

    @property
    def reports_answered(self) -> bool:
        return all(r in self.answered for r in self.reports)

    @property
    def arrival(self) -> datetime | None:
        return self.received.occurred_at if self.received is not None else None

    @property
    def in_flight(self) -> bool:
        return any(r.status == "scheduled" for r in self.recipients)

    def recipient(self, address: str) -> RecipientState | None:
        return next((r for r in self.recipients if r.address == address), None)

    def job(self, job_id: str) -> JobRecord | None:
        return next((j for j in self.jobs if j.job_id == job_id), None)

    def addresses(self, status: RecipientStatus) -> tuple[str, ...]:
        return tuple(r.address for r in self.recipients if r.status == status)

    def with_status(self, status: RecipientStatus) -> tuple[RecipientState, ...]:
        return tuple(r for r in self.recipients if r.status == status)

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
        replace(r, status="scheduled", job_id=event.job_id, attempt=event.attempt)
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
        remote_host=event.remote_host,
        last_attempt_at=event.occurred_at,
        remote_dsn=event.remote_dsn if isinstance(event, DeliverySucceeded) else None,
    )
    state = _replace_recipients(state, {updated.address: updated})
    if updated.status == "deferred" and not state.ever_deferred:
        state = replace(state, ever_deferred=True)
    return state


def _replace_recipients(state: MessageState, updated: dict[str, RecipientState]) -> MessageState:
    return replace(state, recipients=tuple(updated.get(r.address, r) for r in state.recipients))


def expiry_status(rcpt: RecipientState) -> str:
    """The status a recipient not final at bounce_after fails with. Only deferrals leave a
    recipient not final, so its reply_status is its last deferral's."""
    return EXPIRED_AFTER.get(rcpt.reply_status, EXPIRED_STATUS)


def mark_expired(state: MessageState, addresses: Iterable[str]) -> MessageState:
    wanted = set(addresses)
    updated = {
        r.address: replace(r, status="failed", reply_status=expiry_status(r), expired=True)
        for r in state.recipients
        if r.address in wanted and not r.final
    }
    state = _replace_recipients(state, updated)
    return replace(state, reported_failed=state.reported_failed | wanted)


def _report(state: MessageState, event: ReportTrigger) -> MessageState:
    if event.event_id in state.reports:
        return state
    state = replace(state, reports=(*state.reports, event.event_id))
    if isinstance(event, MessageDelayed):
        return replace(state, delayed=True)
    if isinstance(event, MessageExpired):
        return mark_expired(state, event.recipients)
    addresses = frozenset(o.address for o in event.outcomes)
    if isinstance(event, RecipientsFailed):
        return replace(state, reported_failed=state.reported_failed | addresses)
    return replace(state, reported_delivered=state.reported_delivered | addresses)


def _command(state: MessageState, event: MessageHeld | MessageReleased) -> MessageState:
    if event.event_id in state.commands or state.done:
        return state
    return replace(
        state,
        held=isinstance(event, MessageHeld),
        commands=state.commands | {event.event_id},
    )


def _completed(state: MessageState, event: MessageCompleted) -> MessageState:
    if state.completed:
        return state
    if event.expired:
        # A null-sender message expires without MessageExpired; its completion says who.
        state = mark_expired(state, event.expired)
    return replace(state, completed=True)


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
    if isinstance(event, MessageDelayed | MessageExpired | RecipientsFailed | RecipientsDelivered):
        return _report(state, event)
    if isinstance(event, ReportSent):
        return replace(state, answered=state.answered | {event.trigger_event_id})
    if isinstance(event, MessageHeld | MessageReleased):
        return _command(state, event)
    if isinstance(event, MessageDeleted):
        return state if state.deleted else replace(state, deleted=True, held=False)
    if isinstance(event, MessageCompleted):
        return _completed(state, event)
    # Event types this version does not know cannot change delivery state.
    return state


def fold(events: Iterable[Event], initial: MessageState = EMPTY) -> MessageState:
    state = initial
    for event in events:
        state = apply(state, event)
    return state
