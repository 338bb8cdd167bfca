"""The queue's clock as data: its settings, timer outputs and the fired-timer input.

A timer is a one-shot JetStream message schedule per (message, kind). The core
only says what should be set when; the adapter turns `SetTimer` into a schedule,
and a fired schedule comes back as a `TimerFired` input. Fires may be stale (the
state moved on since the schedule was set); `decide` checks the state, never
trusts a fire on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

from pydantic import BaseModel, ConfigDict

TimerKind = Literal["retry", "warn", "expire"]

# Fires may reach us a little before `due` by our own clock (another host set it).
CLOCK_SLACK = timedelta(seconds=1)


@dataclass(frozen=True)
class Timing:
    """`queue.retry_interval`, `queue.warn_after` and `queue.bounce_after`."""

    retry_interval: timedelta = timedelta(minutes=30)
    warn_after: timedelta = timedelta(hours=4)
    bounce_after: timedelta = timedelta(days=5)

    @property
    def retry_grace(self) -> timedelta:
        """Deferred recipients due this soon join the round that is starting now.

        Without it, recipients deferred a few seconds apart in one round (several
        jobs) would drift into as many retry rounds."""
        return max(CLOCK_SLACK, self.retry_interval / 10)


class TimerFired(BaseModel):
    """The payload of a schedule, published back by the server when it is due.

    `forced` comes from an operator (`mailbus queue retry`): every deferred
    recipient is due, whatever its retry time.
    """

    model_config = ConfigDict(frozen=True)

    queue_id: str
    kind: TimerKind
    due: datetime
    forced: bool = False
    request_id: str = ""


@dataclass(frozen=True)
class SetTimer:
    """Set (or move: one schedule per message and kind) the timer `kind` to `due`."""

    queue_id: str
    kind: TimerKind
    due: datetime

    @property
    def fire(self) -> TimerFired:
        return TimerFired(queue_id=self.queue_id, kind=self.kind, due=self.due)


@dataclass(frozen=True)
class ClearTimers:
    """The message left the queue: drop its schedules and fired timers."""

    queue_id: str


def is_due(at: datetime, now: datetime) -> bool:
    return at <= now + CLOCK_SLACK
