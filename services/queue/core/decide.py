"""What the queue does about one input: a pure function of state, input and time.

Inputs are the message's events (MessageReceived, delivery results, ReportSent,
the operator's MessageHeld / MessageReleased / MessageDeleted) and fired timers.
Every output has an id derived only from the queue id and the state (never from
the clock or a random source), so running `decide` again on a redelivered input
yields the same ids and JetStream's Nats-Msg-Id dedup drops the copies.

Outputs, in the order the adapter must carry them out:
  1. events to publish and see acked, in order (reports before MessageCompleted),
  2. `DeliveryJob` commands (after their DeliveryScheduled, so a result can never
     reach the stream before the job it answers),
  3. `SetTimer` schedules, then `ClearTimers`,

Timers exist only for messages that had a recipient deferred: the first
attempt of most messages succeeds, and they never cost a schedule. From the
first deferral on, each deferral (re)sets the retry, warning and expiry timers;
setting one again with the same due time is deduplicated by the server.
  4. `DeleteBody`, once the message is done and every report it triggered has
     its ReportSent (a RET=FULL report needs the body).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from libs.common.contract.events import (
    DeliveryDeferred,
    DeliveryFailed,
    DeliveryJob,
    DeliveryScheduled,
    DeliverySucceeded,
    Destination,
    Event,
    MessageCompleted,
    MessageDelayed,
    MessageDeleted,
    MessageExpired,
    MessageReceived,
    MessageReleased,
    Recipient,
    RecipientsDelivered,
    RecipientsFailed,
)
from services.queue.core.aggregate import MessageState, RecipientState, apply, mark_expired
from services.queue.core.reports import delay_warning, expiry, round_reports
from services.queue.core.routing import Routing, group_by_destination
from services.queue.core.timers import ClearTimers, SetTimer, TimerFired, Timing, is_due


@dataclass(frozen=True)
class DeleteBody:
    """Remove the message body from the Object Store; a missing body is fine."""

    queue_id: str


OutEvent = (
    DeliveryScheduled
    | MessageCompleted
    | MessageDelayed
    | MessageExpired
    | RecipientsFailed
    | RecipientsDelivered
)
Output = OutEvent | DeliveryJob | SetTimer | ClearTimers | DeleteBody
Trigger = Event | TimerFired

OUT_EVENT_TYPES = (
    DeliveryScheduled,
    MessageCompleted,
    MessageDelayed,
    MessageExpired,
    RecipientsFailed,
    RecipientsDelivered,
)
DEFAULT_TIMING = Timing()


def job_id(queue_id: str, attempt: int, index: int) -> str:
    return f"{queue_id}.a{attempt}.d{index}"


def scheduled_event_id(job: str) -> str:
    return f"{job}.scheduled"


def completed_event_id(queue_id: str) -> str:
    return f"{queue_id}.completed"


def next_attempt_at(rcpt: RecipientState, timing: Timing) -> datetime | None:
    if rcpt.status != "deferred" or rcpt.last_attempt_at is None:
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
    )
    return event, job


def plan_round(
    state: MessageState,
    attempt: int,
    addresses: Sequence[str],
    now: datetime,
    routing: Routing,
) -> list[Output]:
    """One job per destination for `addresses`, all with this attempt number."""
    received = state.received
    if received is None or not addresses:
        return []
    events: list[Output] = []
    jobs: list[Output] = []
    for index, (dest, members) in enumerate(group_by_destination(addresses, routing)):
        event, job = _schedule(received, attempt, index, dest, members, now)
        events.append(event)
        jobs.append(job)
    return events + jobs


def initial_plan(state: MessageState, now: datetime, routing: Routing) -> list[Output]:
    """Attempt 1 for every recipient, one job per destination."""
    return plan_round(state, 1, [r.address for r in state.recipients], now, routing)


def _apply_all(state: MessageState, outputs: Sequence[Output]) -> MessageState:
    for out in outputs:
        if isinstance(out, OUT_EVENT_TYPES):
            state = apply(state, out)
    return state


def _cleanup(state: MessageState) -> list[Output]:
    return [DeleteBody(state.queue_id)] if state.reports_answered else []


def _completion(state: MessageState, now: datetime) -> list[Output]:
    """MessageCompleted once every recipient is final; the body waits for the reports."""
    done: list[Output] = []
    if not state.completed:
        done.append(
            MessageCompleted(
                event_id=completed_event_id(state.queue_id),
                queue_id=state.queue_id,
                occurred_at=now,
                delivered=state.addresses("delivered"),
                failed=state.addresses("failed"),
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
    else:
        # No report for a null sender: the completion alone records who expired.
        state = mark_expired(state, [r.address for r in state.recipients if not r.final])
    return out + _completion(state, now)


def _expiry_due(state: MessageState, now: datetime, timing: Timing, fired: bool = False) -> bool:
    """Strictly by our clock, except for the expire timer's own fire (`fired`), which may
    reach us a moment before its time by our clock and would otherwise be lost."""
    if state.arrival is None:
        return False
    expires = state.arrival + timing.bounce_after
    return is_due(expires, now) if fired else expires <= now


def _retry_timer(state: MessageState, timing: Timing) -> list[Output]:
    times = [t for r in state.recipients if (t := next_attempt_at(r, timing)) is not None]
    if state.held or not times:
        return []
    return [SetTimer(state.queue_id, "retry", min(times))]


def _retry(
    state: MessageState, now: datetime, routing: Routing, timing: Timing, forced: bool
) -> list[Output]:
    """A new attempt round for the deferred recipients that are due (all, if forced)."""
    horizon = now + timing.retry_grace
    due: list[str] = []
    for rcpt in state.with_status("deferred"):
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


def _progress(
    state: MessageState, now: datetime, routing: Routing, timing: Timing, deferral: bool
) -> list[Output]:
    """After a result: report finished rounds, then complete, expire or wait."""
    out: list[Output] = list(round_reports(state, now))
    state = _apply_all(state, out)
    if state.all_final:
        return out + _completion(state, now)
    if state.held:
        return out
    if not state.in_flight and _expiry_due(state, now, timing):
        return out + _expire(state, now)
    deadlines = _deadlines(state, timing) if deferral else []
    return out + _retry_timer(state, timing) + deadlines


def _on_timer(
    state: MessageState, fire: TimerFired, now: datetime, routing: Routing, timing: Timing
) -> list[Output]:
    if state.done or state.arrival is None:
        return []  # a stale fire: its message has left the queue
    if fire.kind == "warn":
        if not is_due(state.arrival + timing.warn_after, now):
            return []
        warning = delay_warning(state, now, timing)
        return [warning] if warning is not None else []
    if state.held:
        return []  # no attempt and no expiry while held; release decides again
    if _expiry_due(state, now, timing, fired=fire.kind == "expire"):
        # With recipients in flight, their results will expire the message.
        return [] if state.in_flight else _expire(state, now)
    if fire.kind == "retry":
        return _retry(state, now, routing, timing, fire.forced)
    return []  # an expire timer that is early by our clock, or was moved


def decide(
    state: MessageState,
    trigger: Trigger,
    now: datetime,
    routing: Routing,
    timing: Timing = DEFAULT_TIMING,
) -> list[Output]:
    """`state` may or may not already include `trigger`: applying it again is a no-op."""
    if isinstance(trigger, TimerFired):
        return _on_timer(state, trigger, now, routing, timing) if state.known else []
    before = state
    state = apply(state, trigger)
    if not state.known:
        return []
    if isinstance(trigger, MessageReceived):
        if before.done:
            return []
        if not state.recipients:
            return _completion(state, now)
        # The same plan every time: a redelivered MessageReceived re-emits the same ids.
        return initial_plan(state, now, routing)
    if isinstance(trigger, MessageDeleted):
        clear: list[Output] = [ClearTimers(state.queue_id)] if state.ever_deferred else []
        return clear + _cleanup(state)
    if state.done:
        # Late inputs (results, answers) of a finished message: the body may go now.
        return _cleanup(state)
    if isinstance(trigger, DeliverySucceeded | DeliveryDeferred | DeliveryFailed):
        deferral = isinstance(trigger, DeliveryDeferred)
        return _progress(state, now, routing, timing, deferral)
    if isinstance(trigger, MessageReleased) and not state.held:
        # Also when the state was rebuilt with the release in it: attempting the
        # deferred recipients again is harmless, forgetting to would leave them waiting.
        if _expiry_due(state, now, timing) and not state.in_flight:
            return _expire(state, now)
        return _retry(state, now, routing, timing, forced=True)
    # MessageHeld, ReportSent before the end, and anything else: the state is enough.
    return []


def apply_outputs(state: MessageState, outputs: Sequence[Output]) -> MessageState:
    """The state once the events among `outputs` are in the stream (for the cache)."""
    return _apply_all(state, outputs)
