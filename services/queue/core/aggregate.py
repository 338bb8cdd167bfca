"""A message's delivery state: a pure fold over its events, never stored on its own.

`apply` is total and idempotent: an event already reflected in the state, a
result for a job the state does not know, or a result for a recipient that is
already final returns the state unchanged. That is what lets the queue rebuild
a message from the stream at any time and survive redelivered inputs.

The statuses move only by the tables of `transitions` (a message's status, and
each recipient's); what is recorded here besides are the facts the tables'
conditions and the reports need: the jobs, the replies, the report-triggering
events and their answers, the operator commands already applied.

The first result of a job for a recipient wins: it is also what JetStream keeps,
because result event ids are derived from (job_id, recipient index).

Two facts have no event of their own, to spare a stored write each per message:
the first attempt, which MessageReceived implies (every recipient is on some job
of attempt 1 from then on, and the results name the job and its destination),
and completion, which is every recipient being final. Histories written before
that hold a DeliveryScheduled for attempt 1 and a MessageCompleted; they fold to
the same state.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime
from typing import TypeVar

from libs.common.contract.events import (
    DeliveryAttempted,
    DeliveryDeferred,
    DeliveryFailed,
    DeliveryScheduled,
    DeliverySucceeded,
    Destination,
    Event,
    MessageCompleted,
    MessageDelayed,
    MessageExpired,
    MessageHeld,
    MessageReceived,
    MessageReleased,
    RecipientsDelivered,
    RecipientsFailed,
    ReportSent,
)
from services.queue.core.timers import TimerFired
from services.queue.core.transitions import (
    DONE,
    FINAL,
    Input,
    MessageStatus,
    RecipientStatus,
    input_of,
    message_step,
    recipient_next,
    settled,
)

DeliveryResult = DeliverySucceeded | DeliveryDeferred | DeliveryFailed
ReportTrigger = MessageDelayed | MessageExpired | RecipientsFailed | RecipientsDelivered

EXPIRED_STATUS = "4.4.7"  # RFC 3463: delivery time expired
# Expiry statuses that say more than 4.4.7, by the last deferral's status: a mailbox that
# stayed full until bounce_after is reported as full, permanently (RFC 3463 X.2.2).
EXPIRED_AFTER: dict[str, str] = {"4.2.2": "5.2.2"}


@dataclass(frozen=True)
class RecipientState:
    address: str
    status: RecipientStatus = RecipientStatus.PENDING
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
    # None: a first-attempt job known only from results older than their `destination`.
    destination: Destination | None
    recipients: tuple[str, ...]
    scheduled_at: datetime | None = None  # the mail log's delays= start from the first


@dataclass(frozen=True)
class MessageState:
    queue_id: str = ""
    received: MessageReceived | None = None
    status: MessageStatus = MessageStatus.QUEUED
    recipients: tuple[RecipientState, ...] = ()
    jobs: tuple[JobRecord, ...] = ()
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
        return self.status in DONE

    @property
    def completed(self) -> bool:
        return self.status is MessageStatus.COMPLETED

    @property
    def held(self) -> bool:
        return self.status is MessageStatus.HELD

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
        return any(r.status is RecipientStatus.SCHEDULED for r in self.recipients)

    def recipient(self, address: str) -> RecipientState | None:
        return next((r for r in self.recipients if r.address == address), None)

    def job(self, job_id: str) -> JobRecord | None:
        return next((j for j in self.jobs if j.job_id == job_id), None)

    # `status` is a RecipientStatus or its value ("deferred").
    def addresses(self, status: str) -> tuple[str, ...]:
        return tuple(r.address for r in self.recipients if r.status == status)

    def with_status(self, status: str) -> tuple[RecipientState, ...]:
        return tuple(r for r in self.recipients if r.status == status)

    @property
    def max_attempt(self) -> int:
        # The first attempt has no job record until a result names its job.
        on_jobs = max((j.attempt for j in self.jobs), default=0)
        return max(on_jobs, max((r.attempt for r in self.recipients), default=0))

    def input_of(self, trigger: Event | TimerFired) -> Input:
        return input_of(trigger, self.commands)

    def owns(self, trigger: Event | TimerFired) -> bool:
        """Whether `trigger` is this message's (an empty state takes any message's)."""
        return not self.queue_id or trigger.queue_id == self.queue_id


EMPTY = MessageState()


def _unique(addresses: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(addresses))


def _replace_recipients(state: MessageState, updated: dict[str, RecipientState]) -> MessageState:
    return replace(state, recipients=tuple(updated.get(r.address, r) for r in state.recipients))


def _first_attempt(address: str) -> RecipientState:
    """On a job of attempt 1, not yet known which: the queue answers MessageReceived with
    those jobs alone, and acks it only once they are in the job stream."""
    status = recipient_next(RecipientStatus.PENDING, Input.SCHEDULED)
    assert status is not None
    return RecipientState(address=address, status=status, attempt=1)


def _received(state: MessageState, event: MessageReceived) -> MessageState:
    if state.known:
        return state
    addresses = _unique(r.address for r in event.recipients)
    return replace(
        state,
        received=event,
        recipients=tuple(_first_attempt(a) for a in addresses),
    )


def job_prefix(queue_id: str, attempt: int) -> str:
    """What the ids of one attempt's jobs start with (decide.job_id adds the index)."""
    return f"{queue_id}.a{attempt}."


def _unnamed(rcpt: RecipientState, attempt: int) -> bool:
    """On some job of this attempt, not yet known which (the first attempt)."""
    return (
        rcpt.status is RecipientStatus.SCHEDULED and rcpt.job_id is None and rcpt.attempt == attempt
    )


def _answers(state: MessageState, rcpt: RecipientState, event: DeliveryResult) -> bool:
    """Only the job a recipient is on may answer for it; a first-attempt recipient is on
    one of its attempt's jobs, named by the first result."""
    if rcpt.job_id is not None:
        return rcpt.job_id == event.job_id
    prefix = job_prefix(state.queue_id, event.attempt)
    return _unnamed(rcpt, event.attempt) and event.job_id.startswith(prefix)


def _scheduled(state: MessageState, event: DeliveryScheduled) -> MessageState:
    if state.job(event.job_id) is not None:
        return state
    record = JobRecord(
        event.job_id, event.attempt, event.destination, tuple(event.recipients), event.occurred_at
    )
    targets = set(event.recipients)
    updated: dict[str, RecipientState] = {}
    for r in state.recipients:
        if r.address not in targets:
            continue
        if (status := recipient_next(r.status, Input.SCHEDULED)) is not None:
            updated[r.address] = replace(
                r, status=status, job_id=event.job_id, attempt=event.attempt
            )
        elif _unnamed(r, event.attempt):  # an old history's record of attempt 1
            updated[r.address] = replace(r, job_id=event.job_id)
    return replace(_replace_recipients(state, updated), jobs=(*state.jobs, record))


def _named(state: MessageState, event: DeliveryResult) -> MessageState:
    """The job a first-attempt result names, recorded (its only record)."""
    record = state.job(event.job_id)
    if record is not None:
        if event.recipient in record.recipients:
            return state
        grown = replace(record, recipients=(*record.recipients, event.recipient))
        return replace(state, jobs=tuple(grown if j is record else j for j in state.jobs))
    timings = event.timings
    at = timings.scheduled_at if timings is not None and timings.scheduled_at else None
    record = JobRecord(
        event.job_id, event.attempt, event.destination, (event.recipient,), at or event.occurred_at
    )
    return replace(state, jobs=(*state.jobs, record))


def _result(state: MessageState, event: DeliveryResult) -> MessageState:
    current = state.recipient(event.recipient)
    if current is None or not _answers(state, current, event):
        return state
    status = recipient_next(current.status, Input(event.type))
    if status is None:
        return state
    if current.job_id is None:
        state = _named(state, event)
    updated = replace(
        current,
        job_id=event.job_id,
        status=status,
        reply_code=event.reply_code,
        reply_status=event.status,
        reply_text=event.reply_text,
        remote_host=event.remote_host,
        last_attempt_at=event.occurred_at,
        remote_dsn=event.remote_dsn if isinstance(event, DeliverySucceeded) else None,
    )
    state = _replace_recipients(state, {updated.address: updated})
    if status is RecipientStatus.DEFERRED and not state.ever_deferred:
        state = replace(state, ever_deferred=True)
    return state


def _attempted(state: MessageState, event: DeliveryAttempted) -> MessageState:
    """A job's results folded as its per-recipient events would be, in the job's order."""
    for result in event.per_recipient():
        state = _result(state, result)
    return state


def expiry_status(rcpt: RecipientState) -> str:
    """The status a recipient not final at bounce_after fails with. Only deferrals leave a
    recipient not final, so its reply_status is its last deferral's."""
    return EXPIRED_AFTER.get(rcpt.reply_status, EXPIRED_STATUS)


def mark_expired(state: MessageState, addresses: Iterable[str]) -> MessageState:
    wanted = set(addresses)
    updated = {
        r.address: replace(r, status=status, reply_status=expiry_status(r), expired=True)
        for r in state.recipients
        if r.address in wanted and (status := recipient_next(r.status, Input.EXPIRED)) is not None
    }
    state = _replace_recipients(state, updated)
    return replace(state, reported_failed=state.reported_failed | wanted)


R = TypeVar("R", bound=ReportTrigger)


def _counted(
    fold: Callable[[MessageState, R], MessageState],
) -> Callable[[MessageState, R], MessageState]:
    """A report-triggering event counts once: its id is what the body waits to see answered."""

    def once(state: MessageState, event: R) -> MessageState:
        if event.event_id in state.reports:
            return state
        return fold(replace(state, reports=(*state.reports, event.event_id)), event)

    return once


@_counted
def _delayed(state: MessageState, event: MessageDelayed) -> MessageState:
    return replace(state, delayed=True)


@_counted
def _expired(state: MessageState, event: MessageExpired) -> MessageState:
    return mark_expired(state, event.recipients)


@_counted
def _round_failed(state: MessageState, event: RecipientsFailed) -> MessageState:
    covered = frozenset(o.address for o in event.outcomes)
    return replace(state, reported_failed=state.reported_failed | covered)


@_counted
def _round_delivered(state: MessageState, event: RecipientsDelivered) -> MessageState:
    covered = frozenset(o.address for o in event.outcomes)
    return replace(state, reported_delivered=state.reported_delivered | covered)


def _answered(state: MessageState, event: ReportSent) -> MessageState:
    return replace(state, answered=state.answered | {event.trigger_event_id})


def _command(state: MessageState, event: MessageHeld | MessageReleased) -> MessageState:
    return replace(state, commands=state.commands | {event.event_id})


def _completed(state: MessageState, event: MessageCompleted) -> MessageState:
    # A null-sender message expires without MessageExpired; its completion says who.
    return mark_expired(state, event.expired) if event.expired else state


Fold = Callable[[MessageState, Event], MessageState]
E = TypeVar("E", bound=Event)


def _on(cls: type[E], fold: Callable[[MessageState, E], MessageState]) -> Fold:
    def checked(state: MessageState, event: Event) -> MessageState:
        # FOLDS is keyed by the input an event is, which is named after its class; another
        # class of the same name would be a bug, not an input to ignore.
        if not isinstance(event, cls):
            raise TypeError(f"{type(event).__qualname__} is not {cls.__qualname__}")
        return fold(state, event)

    return checked


# What each input records besides its status step. Inputs without an entry (the operator's
# delete, a command already applied, unknown event types) only move the status, if at all.
FOLDS: dict[Input, Fold] = {
    Input.RECEIVED: _on(MessageReceived, _received),
    Input.SCHEDULED: _on(DeliveryScheduled, _scheduled),
    Input.SUCCEEDED: _on(DeliverySucceeded, _result),
    Input.DEFERRED: _on(DeliveryDeferred, _result),
    Input.FAILED: _on(DeliveryFailed, _result),
    Input.ATTEMPTED: _on(DeliveryAttempted, _attempted),
    Input.DELAYED: _on(MessageDelayed, _delayed),
    Input.EXPIRED: _on(MessageExpired, _expired),
    Input.ROUND_FAILED: _on(RecipientsFailed, _round_failed),
    Input.ROUND_DELIVERED: _on(RecipientsDelivered, _round_delivered),
    Input.REPORT_SENT: _on(ReportSent, _answered),
    Input.HELD: _on(MessageHeld, _command),
    Input.RELEASED: _on(MessageReleased, _command),
    Input.COMPLETED: _on(MessageCompleted, _completed),
}


def apply(state: MessageState, event: Event) -> MessageState:
    if not state.owns(event):
        return state
    if not state.queue_id:
        state = replace(state, queue_id=event.queue_id)
    on = state.input_of(event)
    step = message_step(state.status, on)
    record = FOLDS.get(on)
    if record is not None:
        state = record(state, event)
    status = settled(step.next, state.all_final)
    return state if status is state.status else replace(state, status=status)


def fold(events: Iterable[Event], initial: MessageState = EMPTY) -> MessageState:
    state = initial
    for event in events:
        state = apply(state, event)
    return state
