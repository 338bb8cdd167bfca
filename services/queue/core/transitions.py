"""Every transition of the queue, in this one file: status x input -> next status, and for
a message what the queue does about it.

Two machines, as h11 keeps a client's and a server's:

- `RECIPIENT`: each recipient, from pending to delivered or failed; an input without a
  cell leaves the recipient as it is (a late result, a second schedule);
- `MESSAGE`: the message, from queued (or held) to completed or deleted; each cell is a
  `Step` (next status, `Action`), and an input without a cell keeps the status and does
  its row's `otherwise`.

`aggregate.apply` moves the statuses by these tables, and `decide` carries out the action
of the cell; no other code sets a status. The conditions that are facts rather than
statuses stay with the code that keeps the facts: a result moves only the recipient
scheduled on its job, a job is recorded once, a report-triggering event counts once.

`decide` looks the cell up by the status *before* the input, but it may be given a state
that already holds its input (rebuilt from the stream). So a cell's action is also the
action of the cell its input leads to, and a hold or release already applied is an input
of its own (`HELD_AGAIN`, `RELEASED_AGAIN`): that is what keeps a redelivered release
from undoing a later hold.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from libs.common.contract.events import Event, event_type
from services.queue.core.timers import TimerFired


class RecipientStatus(StrEnum):
    PENDING = "pending"
    SCHEDULED = "scheduled"  # on a job (one SMTP transaction) that has no result yet
    DEFERRED = "deferred"  # retried retry_interval after its last attempt
    DELIVERED = "delivered"
    FAILED = "failed"


class MessageStatus(StrEnum):
    QUEUED = "queued"  # attempts, retries and expiry run
    HELD = "held"  # by the operator: no attempt and no expiry until released
    COMPLETED = "completed"  # every recipient final (settled, below: no event says so)
    DELETED = "deleted"  # by the operator


class Input(StrEnum):
    """What can happen to a message: its events (named by their type) and its fired timers."""

    RECEIVED = "MessageReceived"
    SCHEDULED = "DeliveryScheduled"
    SUCCEEDED = "DeliverySucceeded"
    DEFERRED = "DeliveryDeferred"
    FAILED = "DeliveryFailed"
    # A job's results together (each recipient moves by its own outcome, as above).
    ATTEMPTED = "DeliveryAttempted"
    DELAYED = "MessageDelayed"
    EXPIRED = "MessageExpired"  # also a recipient's input when bounce_after has passed
    ROUND_FAILED = "RecipientsFailed"
    ROUND_DELIVERED = "RecipientsDelivered"
    REPORT_SENT = "ReportSent"
    COMPLETED = "MessageCompleted"
    HELD = "MessageHeld"
    HELD_AGAIN = "MessageHeld, already applied"
    RELEASED = "MessageReleased"
    RELEASED_AGAIN = "MessageReleased, already applied"
    DELETED = "MessageDeleted"
    RETRY_DUE = "retry timer"
    RETRY_FORCED = "retry timer, forced by the operator"
    WARN_DUE = "warn timer"
    EXPIRE_DUE = "expire timer"
    OTHER = "an event type this version does not know"


class Action(StrEnum):
    """What `decide` does once the input is applied (decide.ACTIONS carries each out)."""

    NOTHING = "nothing"
    PLAN = "plan"  # attempt 1 for every recipient; complete at once if there is none
    PROGRESS = "progress"  # report finished rounds, then complete, expire or set timers
    PROGRESS_HELD = "progress while held"  # report finished rounds, complete if all final
    RELEASE = "release"  # expire if due, else attempt every deferred recipient now
    RETRY = "retry"  # expire if due, else a round for the deferred recipients that are due
    WARN = "warn"  # the delay warning, once, when warn_after has passed
    EXPIRE = "expire"  # fail every recipient not final, once bounce_after has passed
    CLEANUP = "cleanup"  # done: the body goes once every report it triggered is answered
    # A result on a state that already holds it (rebuilt from the stream), and so is
    # completed already: what the completing result would have done, all idempotent.
    FINISH = "finish"  # report finished rounds, clear the timers, then as for CLEANUP
    LEAVE = "leave"  # deleted: its timers go, and the body as for CLEANUP


# --- recipients ------------------------------------------------------------------------

_R = RecipientStatus

RECIPIENT: Mapping[RecipientStatus, Mapping[Input, RecipientStatus]] = {
    _R.PENDING: {Input.SCHEDULED: _R.SCHEDULED, Input.EXPIRED: _R.FAILED},
    _R.SCHEDULED: {
        Input.SUCCEEDED: _R.DELIVERED,
        Input.DEFERRED: _R.DEFERRED,
        Input.FAILED: _R.FAILED,
        Input.EXPIRED: _R.FAILED,
    },
    _R.DEFERRED: {Input.SCHEDULED: _R.SCHEDULED, Input.EXPIRED: _R.FAILED},
    _R.DELIVERED: {},
    _R.FAILED: {},
}

# A recipient is final when nothing moves it any more.
FINAL = frozenset(status for status, row in RECIPIENT.items() if not row)


def recipient_next(status: RecipientStatus, on: Input) -> RecipientStatus | None:
    """The recipient's next status, or None when `on` does not move it."""
    return RECIPIENT[status].get(on)


# --- messages --------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    next: MessageStatus
    action: Action


@dataclass(frozen=True)
class Row:
    """The cells of one status; an input without a cell keeps the status and does `otherwise`."""

    cells: Mapping[Input, Step]
    otherwise: Action


_M = MessageStatus
_A = Action


def _left(status: MessageStatus, results: Action) -> Row:
    """A message that has left the queue: late inputs (answers) may only let its body go;
    its timers are stale fires. A result does `results`."""
    cells = {
        # CLEANUP, not NOTHING: a message without recipients completes with its arrival.
        Input.RECEIVED: Step(status, _A.CLEANUP),
        Input.SUCCEEDED: Step(status, results),
        Input.DEFERRED: Step(status, results),
        Input.FAILED: Step(status, results),
        Input.ATTEMPTED: Step(status, results),
        Input.DELETED: Step(status, _A.LEAVE),
        Input.RETRY_DUE: Step(status, _A.NOTHING),
        Input.RETRY_FORCED: Step(status, _A.NOTHING),
        Input.WARN_DUE: Step(status, _A.NOTHING),
        Input.EXPIRE_DUE: Step(status, _A.NOTHING),
    }
    return Row(cells, otherwise=_A.CLEANUP)


MESSAGE: Mapping[MessageStatus, Row] = {
    _M.QUEUED: Row(
        {
            Input.RECEIVED: Step(_M.QUEUED, _A.PLAN),
            Input.SUCCEEDED: Step(_M.QUEUED, _A.PROGRESS),
            Input.DEFERRED: Step(_M.QUEUED, _A.PROGRESS),
            Input.FAILED: Step(_M.QUEUED, _A.PROGRESS),
            Input.ATTEMPTED: Step(_M.QUEUED, _A.PROGRESS),
            Input.HELD: Step(_M.HELD, _A.NOTHING),
            Input.RELEASED: Step(_M.QUEUED, _A.RELEASE),
            # Rebuilt with its release in it: attempting again is harmless, forgetting
            # to would leave the deferred recipients waiting for their retry timer.
            Input.RELEASED_AGAIN: Step(_M.QUEUED, _A.RELEASE),
            Input.COMPLETED: Step(_M.COMPLETED, _A.CLEANUP),
            Input.DELETED: Step(_M.DELETED, _A.LEAVE),
            Input.RETRY_DUE: Step(_M.QUEUED, _A.RETRY),
            Input.RETRY_FORCED: Step(_M.QUEUED, _A.RETRY),
            Input.WARN_DUE: Step(_M.QUEUED, _A.WARN),
            Input.EXPIRE_DUE: Step(_M.QUEUED, _A.EXPIRE),
        },
        otherwise=_A.NOTHING,
    ),
    # Held: results still complete the message, and the delay warning still goes out,
    # but no attempt starts and nothing expires; the release decides again.
    _M.HELD: Row(
        {
            Input.RECEIVED: Step(_M.HELD, _A.PLAN),
            Input.SUCCEEDED: Step(_M.HELD, _A.PROGRESS_HELD),
            Input.DEFERRED: Step(_M.HELD, _A.PROGRESS_HELD),
            Input.FAILED: Step(_M.HELD, _A.PROGRESS_HELD),
            Input.ATTEMPTED: Step(_M.HELD, _A.PROGRESS_HELD),
            Input.RELEASED: Step(_M.QUEUED, _A.RELEASE),
            Input.COMPLETED: Step(_M.COMPLETED, _A.CLEANUP),
            Input.DELETED: Step(_M.DELETED, _A.LEAVE),
            Input.WARN_DUE: Step(_M.HELD, _A.WARN),
        },
        otherwise=_A.NOTHING,
    ),
    # The first of completion and MessageDeleted ends the message for good. A completed
    # message's results are also what completed it, seen again in a rebuilt state.
    _M.COMPLETED: _left(_M.COMPLETED, _A.FINISH),
    _M.DELETED: _left(_M.DELETED, _A.CLEANUP),
}

# A message is done (has left the queue) when nothing moves it any more.
DONE = frozenset(
    status
    for status, row in MESSAGE.items()
    if all(step.next is status for step in row.cells.values())
)


def message_step(status: MessageStatus, on: Input) -> Step:
    row = MESSAGE[status]
    return row.cells.get(on) or Step(status, row.otherwise)


def settled(status: MessageStatus, all_final: bool) -> MessageStatus:
    """The status once an input is recorded: a queued or held message whose recipients
    are all final has completed. That is a fact of the fold, so no event says it (old
    histories carry a MessageCompleted too, which moves the status the same way)."""
    if all_final and status in (MessageStatus.QUEUED, MessageStatus.HELD):
        return MessageStatus.COMPLETED
    return status


_TIMER_INPUTS = {"retry": Input.RETRY_DUE, "warn": Input.WARN_DUE, "expire": Input.EXPIRE_DUE}
_AGAIN = {Input.HELD: Input.HELD_AGAIN, Input.RELEASED: Input.RELEASED_AGAIN}


def input_of(trigger: Event | TimerFired, commands: frozenset[str]) -> Input:
    """The input a trigger is, given the operator commands the state has applied."""
    if isinstance(trigger, TimerFired):
        if trigger.kind == "retry" and trigger.forced:
            return Input.RETRY_FORCED
        return _TIMER_INPUTS[trigger.kind]
    try:
        on = Input(event_type(trigger))
    except ValueError:
        return Input.OTHER
    if on in _AGAIN and trigger.event_id in commands:
        return _AGAIN[on]
    return on
