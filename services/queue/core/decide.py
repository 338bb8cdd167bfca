"""What the queue does about one input event: a pure function of state, input and time.

Every output has an id derived only from the queue id and the plan (never from
the clock or a random source), so running `decide` again on a redelivered
input yields the same ids and JetStream's Nats-Msg-Id dedup drops the copies.

Outputs, in the order the adapter must carry them out:
  1. events (`DeliveryScheduled`, `MessageCompleted`) to publish and see acked,
  2. `DeliveryJob` commands to publish and see acked (after their DeliveryScheduled,
     so a result can never reach the stream before the job it answers),
  3. `DeleteBody`, once the MessageCompleted it follows is durable.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from libs.common.events import (
    DeliveryDeferred,
    DeliveryFailed,
    DeliveryJob,
    DeliveryScheduled,
    DeliverySucceeded,
    Destination,
    Event,
    MessageCompleted,
    MessageReceived,
    Recipient,
)
from services.queue.core.aggregate import MessageState, apply
from services.queue.core.routing import Routing, group_by_destination


@dataclass(frozen=True)
class DeleteBody:
    """Remove the message body from the Object Store; a missing body is fine."""

    queue_id: str


Output = DeliveryScheduled | MessageCompleted | DeliveryJob | DeleteBody


def job_id(queue_id: str, attempt: int, index: int) -> str:
    return f"{queue_id}.a{attempt}.d{index}"


def scheduled_event_id(job: str) -> str:
    return f"{job}.scheduled"


def completed_event_id(queue_id: str) -> str:
    return f"{queue_id}.completed"


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


def initial_plan(state: MessageState, now: datetime, routing: Routing) -> list[Output]:
    """Attempt 1 for every recipient, one job per destination."""
    received = state.received
    if received is None:
        return []
    addresses = [r.address for r in state.recipients]
    events: list[Output] = []
    jobs: list[Output] = []
    for index, (dest, members) in enumerate(group_by_destination(addresses, routing)):
        event, job = _schedule(received, 1, index, dest, members, now)
        events.append(event)
        jobs.append(job)
    return events + jobs


def _completion(state: MessageState, now: datetime) -> list[Output]:
    done: list[Output] = []
    if not state.completed:
        done.append(
            MessageCompleted(
                event_id=completed_event_id(state.queue_id),
                queue_id=state.queue_id,
                occurred_at=now,
                delivered=state.addresses("delivered"),
                failed=state.addresses("failed"),
            )
        )
    done.append(DeleteBody(state.queue_id))
    return done


def decide(state: MessageState, trigger: Event, now: datetime, routing: Routing) -> list[Output]:
    """`state` may or may not already include `trigger`: applying it again is a no-op."""
    before_completed = state.completed
    state = apply(state, trigger)
    if not state.known:
        return []
    if isinstance(trigger, MessageReceived):
        if before_completed:
            return []
        if not state.recipients:
            return _completion(state, now)
        # The same plan every time: a redelivered MessageReceived re-emits the same ids.
        return initial_plan(state, now, routing)
    if isinstance(trigger, DeliverySucceeded | DeliveryDeferred | DeliveryFailed):
        if state.all_final:
            return _completion(state, now)
    return []


def apply_outputs(state: MessageState, outputs: Sequence[Output]) -> MessageState:
    """The state once the events among `outputs` are in the stream (for the cache)."""
    for out in outputs:
        if isinstance(out, DeliveryScheduled | MessageCompleted):
            state = apply(state, out)
    return state
