"""One line of `mailbus queue list`: what an operator wants to see of a queued message."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from services.queue.core.aggregate import MessageState
from services.queue.core.decide import next_attempt_at
from services.queue.core.timers import Timing

QueueState = Literal["active", "deferred", "held"]


class QueueEntry(BaseModel):
    """`recipients` are those not final yet; `next_attempt` is None while one is running."""

    model_config = ConfigDict(frozen=True)

    queue_id: str
    arrival: datetime
    size: int
    sender: str
    recipients: tuple[str, ...]
    state: QueueState
    attempts: int
    next_attempt: datetime | None = None
    last_reply: str = ""
    # The last reply per waiting recipient that has one (`mailbus queue list`).
    reasons: dict[str, str] = Field(default_factory=dict)


def summarize(state: MessageState, timing: Timing) -> QueueEntry | None:
    """None for a message that is not (or no longer) in the queue."""
    received = state.received
    if received is None or state.done:
        return None
    waiting = [r for r in state.recipients if not r.final]
    times = [t for r in waiting if (t := next_attempt_at(r, timing)) is not None]
    if state.held:
        status: QueueState = "held"
    elif state.in_flight or not times:
        status = "active"
    else:
        status = "deferred"
    last = next((r.diagnostic for r in waiting if r.diagnostic), "")
    return QueueEntry(
        queue_id=state.queue_id,
        arrival=received.occurred_at,
        size=received.size,
        sender=received.mail_from,
        recipients=tuple(r.address for r in waiting),
        state=status,
        attempts=state.max_attempt,
        next_attempt=min(times) if status == "deferred" else None,
        last_reply=last,
        reasons={r.address: r.diagnostic for r in waiting if r.diagnostic},
    )
