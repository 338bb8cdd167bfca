"""What the queue does about one input: a pure function of state, input and time.

Inputs are the message's events (MessageReceived, delivery results, ReportSent,
the operator's MessageHeld / MessageReleased / MessageDeleted) and fired timers.
`decide` looks the input up in `transitions.MESSAGE` by the message's status and
carries out that cell's action (`ACTIONS`) on the state with the input applied.
Every output has an id derived only from the queue id and the state (never from
the clock or a random source), so running `decide` again on a redelivered input
yields the same ids and JetStream's Nats-Msg-Id dedup drops the copies.

Outputs, in the order the adapter must carry them out:
  1. events to publish and see acked, in order (reports before MessageCompleted),
  2. `DeliveryJob` commands (a retry's after its DeliveryScheduled, so a result can
     never reach the stream before the record of the job it answers; a first
     attempt's jobs have no such record, MessageReceived is theirs),
  3. `SetTimer` schedules, then `ClearTimers`,
  4. `DeleteBody`, once the message is done and every report it triggered has
     its ReportSent (a RET=FULL report needs the body).

Timers exist only for messages that had a recipient deferred: the first
attempt of most messages succeeds, and they never cost a schedule. From the
first deferral on, each deferral (re)sets the retry, warning and expiry timers;
setting one again with the same due time is deduplicated by the server.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import get_args

from libs.common.contract.events import (
    DeliveryAttempted,
    DeliveryDeferred,
    DeliveryJob,
    DeliveryScheduled,
    Destination,
    Event,
    MessageCompleted,
    MessageDelayed,
    MessageExpired,
    MessageReceived,
    Recipient,
    RecipientsDelivered,
    RecipientsFailed,
)
from services.queue.core.aggregate import (
    MessageState,
    RecipientState,
    apply,
    job_prefix,
    mark_expired,
)
from services.queue.core.reports import delay_warning, expiry, round_reports
from services.queue.core.routing import Routing, group_by_destination
from services.queue.core.timers import ClearTimers, SetTimer, TimerFired, Timing, is_due
from services.queue.core.transitions import Action, Input, RecipientStatus, message_step


@dataclass(frozen=True)
class DeleteBody:
    """Remove the message body (MAILBUS_BODIES); a missing body is fine."""

    queue_id: str


OutEvent = (
    DeliveryScheduled
    | MessageCompleted
    | MessageDelayed
    | MessageExpired
    | RecipientsFailed
    | RecipientsDelivered
)
# The event types the queue writes itself (read off the union, so it is listed once).
OUT_EVENT_TYPES: tuple[type[Event], ...] = get_args(OutEvent)
Output = OutEvent | DeliveryJob | SetTimer | ClearTimers | DeleteBody
Trigger = Event | TimerFired

DEFAULT_TIMING = Timing()


def job_id(queue_id: str, attempt: int, index: int) -> str:
    return f"{job_prefix(queue_id, attempt)}d{index}"


def scheduled_event_id(job: str) -> str:
    return f"{job}.scheduled"


def completed_event_id(queue_id: str) -> str:
    return f"{queue_id}.completed"


def next_attempt_at(rcpt: RecipientState, timing: Timing) -> datetime | None:
    if rcpt.status is not RecipientStatus.DEFERRED or rcpt.last_attempt_at is None:
        return None
    return rcpt.last_attempt_at + timing.retry_interval


def _schedule(
    received: MessageReceived,
    attempt: int,
    index: int,
    destination: Destination,
    addresses: Sequence[str],
    now: datetime,
) -> tuple[DeliveryScheduled, DeliveryJob]:
    jid = job_id(received.queue_id, attempt, index)
    wanted = set(addresses)
    # Keep the DSN parameters; a duplicated RCPT is sent once.
    params: dict[str, Recipient] = {}
    for rcpt in received.recipients:
        if rcpt.address in wanted:
            params.setdefault(rcpt.address, rcpt)
    event = DeliveryScheduled(
        event_id=scheduled_event_id(jid),
        queue_id=received.queue_id,
        occurred_at=now,
        job_id=jid,
        attempt=attempt,
        destination=destination,
        recipients=tuple(addresses),
    )
    job = DeliveryJob(
        job_id=jid,
        queue_id=received.queue_id,
        attempt=attempt,
        destination=destination,
        mail_from=received.mail_from,
        recipients=tuple(params[a] for a in addresses),
        size=received.size,
        envid=received.envid,
        ret=received.ret,
        trace_parent=received.trace_parent,
        one_result=True,  # this queue reads a DeliveryAttempted
    )
    return event, job


def plan_round(
    state: MessageState,
    attempt: int,
    addresses: Sequence[str],
    now: datetime,
    routing: Routing,
) -> list[Output]:
    """One job per destination for `addresses`, all with this attempt number. A retry's
    jobs are recorded by a DeliveryScheduled each; the first attempt's by MessageReceived
    (every recipient is on one of them) and then by their results, which name the job
    and its destination: one stored write less per message."""
    received = state.received
    if received is None or not addresses:
        return []
    events: list[Output] = []
    jobs: list[Output] = []
    for index, (dest, members) in enumerate(group_by_destination(addresses, routing)):
        event, job = _schedule(received, attempt, index, dest, members, now)
        if attempt > 1:
            events.append(event)
        jobs.append(job)
    return events + jobs


def initial_plan(state: MessageState, now: datetime, routing: Routing) -> list[Output]:
    """Attempt 1 for every recipient, one job per destination."""
    return plan_round(state, 1, [r.address for r in state.recipients], now, routing)


def _apply_all(state: MessageState, outputs: Sequence[Output]) -> MessageState:
    for out in outputs:
        if isinstance(out, Event):
            state = apply(state, out)
    return state


class Expiry(Enum):
    NOT_DUE = "not due"  # bounce_after has not passed
    AWAITING = "awaiting results"  # it has, but results in flight decide (the last expires it)
    DUE = "due"


def expiry_of(state: MessageState, now: datetime, timing: Timing, fired: bool = False) -> Expiry:
    """Whether the message expires now. Strictly by our clock, except for the expire
    timer's own fire (`fired`), which may reach us a moment before its time by our
    clock and would otherwise be lost."""
    if state.arrival is None:
        return Expiry.NOT_DUE
    expires = state.arrival + timing.bounce_after
    if not (is_due(expires, now) if fired else expires <= now):
        return Expiry.NOT_DUE
    return Expiry.AWAITING if state.in_flight else Expiry.DUE


def _cleanup(state: MessageState) -> list[Output]:
    return [DeleteBody(state.queue_id)] if state.reports_answered else []


def _completion(state: MessageState, now: datetime, unrecorded: bool = False) -> list[Output]:
    """Every recipient is final: the fold says the message completed, so no event needs
    to, unless some expired without a MessageExpired (`unrecorded`, a null sender):
    then a MessageCompleted is what records it. The body waits for the reports."""
    done: list[Output] = []
    if unrecorded:
        done.append(
            MessageCompleted(
                event_id=completed_event_id(state.queue_id),
                queue_id=state.queue_id,
                occurred_at=now,
                delivered=state.addresses(RecipientStatus.DELIVERED),
                failed=state.addresses(RecipientStatus.FAILED),
                expired=tuple(r.address for r in state.recipients if r.expired),
            )
        )
    if state.ever_deferred:
        done.append(ClearTimers(state.queue_id))
    return done + _cleanup(state)


def _expire(state: MessageState, now: datetime) -> list[Output]:
    """bounce_after has passed: every recipient not final fails (4.4.7, or 5.2.2 for a
    mailbox that stayed full; see expiry_status)."""
    out: list[Output] = []
    expired = expiry(state, now)
    if expired is not None:
        out.append(expired)
        state = apply(state, expired)
        return out + _completion(state, now)
    # No report for a null sender: the completion alone records who expired.
    waiting = [r.address for r in state.recipients if not r.final]
    state = mark_expired(state, waiting)
    return _completion(state, now, unrecorded=bool(waiting))


def _retry_timer(state: MessageState, timing: Timing) -> list[Output]:
    times = [t for r in state.recipients if (t := next_attempt_at(r, timing)) is not None]
    return [SetTimer(state.queue_id, "retry", min(times))] if times else []


def _retry(
    state: MessageState, now: datetime, routing: Routing, timing: Timing, forced: bool
) -> list[Output]:
    """A new attempt round for the deferred recipients that are due (all, if forced)."""
    horizon = now + timing.retry_grace
    due: list[str] = []
    for rcpt in state.with_status(RecipientStatus.DEFERRED):
        at = next_attempt_at(rcpt, timing)
        if forced or at is None or at <= horizon:
            due.append(rcpt.address)
    out = plan_round(state, state.max_attempt + 1, due, now, routing)
    return out + _retry_timer(_apply_all(state, out), timing)


def _deadlines(state: MessageState, timing: Timing) -> list[Output]:
    """The delay-warning and expiry timers, once the message has been deferred."""
    if state.arrival is None:
        return []
    out: list[Output] = []
    if not state.delayed and state.received is not None and state.received.mail_from:
        out.append(SetTimer(state.queue_id, "warn", state.arrival + timing.warn_after))
    out.append(SetTimer(state.queue_id, "expire", state.arrival + timing.bounce_after))
    return out


def _reported(state: MessageState, now: datetime) -> tuple[list[Output], MessageState]:
    """The reports of the rounds a result finished, and the state with them."""
    out: list[Output] = list(round_reports(state, now))
    return out, _apply_all(state, out)


# --- the actions of transitions.MESSAGE, each on the state with its input applied --------


@dataclass(frozen=True)
class Moment:
    """What an action needs besides the state: the input, our clock and the settings."""

    on: Input
    now: datetime
    routing: Routing
    timing: Timing
    deferred: bool = False  # the input deferred a recipient (a result, or a job's results)


Act = Callable[[MessageState, Moment], list[Output]]


def _nothing(state: MessageState, m: Moment) -> list[Output]:
    return []


def _plan(state: MessageState, m: Moment) -> list[Output]:
    if not state.recipients:
        return _completion(state, m.now)
    # The same plan every time: a redelivered MessageReceived re-emits the same ids.
    return initial_plan(state, m.now, m.routing)


def _progress(state: MessageState, m: Moment) -> list[Output]:
    """After a result: report finished rounds, then complete, expire or wait."""
    out, state = _reported(state, m.now)
    if state.all_final:
        return out + _completion(state, m.now)
    if expiry_of(state, m.now, m.timing) is Expiry.DUE:
        return out + _expire(state, m.now)
    deadlines = _deadlines(state, m.timing) if m.deferred else []
    return out + _retry_timer(state, m.timing) + deadlines


def _progress_held(state: MessageState, m: Moment) -> list[Output]:
    out, state = _reported(state, m.now)
    return out + _completion(state, m.now) if state.all_final else out


def _release(state: MessageState, m: Moment) -> list[Output]:
    if expiry_of(state, m.now, m.timing) is Expiry.DUE:
        return _expire(state, m.now)
    return _retry(state, m.now, m.routing, m.timing, forced=True)


def _retry_due(state: MessageState, m: Moment) -> list[Output]:
    match expiry_of(state, m.now, m.timing):
        case Expiry.DUE:
            return _expire(state, m.now)
        case Expiry.AWAITING:
            return []  # the results in flight will expire it
        case Expiry.NOT_DUE:
            forced = m.on is Input.RETRY_FORCED
            return _retry(state, m.now, m.routing, m.timing, forced)


def _warn(state: MessageState, m: Moment) -> list[Output]:
    if state.arrival is None or not is_due(state.arrival + m.timing.warn_after, m.now):
        return []
    warning = delay_warning(state, m.now, m.timing)
    return [warning] if warning is not None else []


def _expire_due(state: MessageState, m: Moment) -> list[Output]:
    if expiry_of(state, m.now, m.timing, fired=True) is Expiry.DUE:
        return _expire(state, m.now)
    return []  # early by our clock, moved since, or waiting for the results in flight


def _cleanup_action(state: MessageState, m: Moment) -> list[Output]:
    return _cleanup(state)


def _finish(state: MessageState, m: Moment) -> list[Output]:
    """A result already folded into a completed state (rebuilt from the stream after the
    result was written): do again what completing did; each part derives nothing new
    once done (reports by who is covered, timers purged, a missing body is fine)."""
    out, state = _reported(state, m.now)
    clear: list[Output] = [ClearTimers(state.queue_id)] if state.ever_deferred else []
    return out + clear + _cleanup(state)


def _leave(state: MessageState, m: Moment) -> list[Output]:
    clear: list[Output] = [ClearTimers(state.queue_id)] if state.ever_deferred else []
    return clear + _cleanup(state)


ACTIONS: dict[Action, Act] = {
    Action.NOTHING: _nothing,
    Action.PLAN: _plan,
    Action.PROGRESS: _progress,
    Action.PROGRESS_HELD: _progress_held,
    Action.RELEASE: _release,
    Action.RETRY: _retry_due,
    Action.WARN: _warn,
    Action.EXPIRE: _expire_due,
    Action.CLEANUP: _cleanup_action,
    Action.FINISH: _finish,
    Action.LEAVE: _leave,
}


def decide(
    state: MessageState,
    trigger: Trigger,
    now: datetime,
    routing: Routing,
    timing: Timing = DEFAULT_TIMING,
) -> list[Output]:
    """`state` may or may not already include `trigger`: applying it again is a no-op, and
    the table gives the same action either way."""
    if not state.owns(trigger):
        return []  # another message's input
    on = state.input_of(trigger)
    step = message_step(state.status, on)
    after = apply(state, trigger) if isinstance(trigger, Event) else state
    if not after.known:
        return []
    return ACTIONS[step.action](after, Moment(on, now, routing, timing, _defers(trigger)))


def _defers(trigger: Trigger) -> bool:
    if isinstance(trigger, DeliveryAttempted):
        return any(r.outcome == "deferred" for r in trigger.results)
    return isinstance(trigger, DeliveryDeferred)


def apply_outputs(state: MessageState, outputs: Sequence[Output]) -> MessageState:
    """The state once the events among `outputs` are in the stream (for the cache)."""
    return _apply_all(state, outputs)
