"""Which events ask for a report, and what each one reports on."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from libs.common.contract.events import (
    AnyEvent,
    MessageDelayed,
    MessageExpired,
    RecipientOutcome,
    RecipientsDelivered,
    RecipientsFailed,
)

Kind = Literal["failure", "delay", "success", "expiry"]

TRIGGER_TYPES: tuple[str, ...] = (
    "RecipientsFailed",
    "MessageDelayed",
    "MessageExpired",
    "RecipientsDelivered",
)

# What an event of an older shape (recipients without outcomes) stands for.
_EXPIRED_STATUS = "4.4.7"
_DELAYED_STATUS = "4.0.0"


@dataclass(frozen=True)
class Trigger:
    event_id: str
    queue_id: str
    kind: Kind
    occurred_at: datetime
    outcomes: tuple[RecipientOutcome, ...]
    will_retry_until: datetime | None = None


def trigger_of(event: AnyEvent) -> Trigger | None:
    """The report request an event carries, or None for events the notifier ignores."""
    if isinstance(event, RecipientsFailed):
        return _trigger(
            event.event_id, event.queue_id, "failure", event.occurred_at, event.outcomes
        )
    if isinstance(event, RecipientsDelivered):
        return _trigger(
            event.event_id, event.queue_id, "success", event.occurred_at, event.outcomes
        )
    if isinstance(event, MessageExpired):
        outcomes = event.outcomes or tuple(
            RecipientOutcome(address=a, action="failed", status=_EXPIRED_STATUS)
            for a in event.recipients
        )
        return _trigger(event.event_id, event.queue_id, "expiry", event.occurred_at, outcomes)
    if isinstance(event, MessageDelayed):
        outcomes = event.outcomes or tuple(
            RecipientOutcome(address=a, action="delayed", status=_DELAYED_STATUS)
            for a in event.recipients
        )
        return Trigger(
            event.event_id,
            event.queue_id,
            "delay",
            event.occurred_at,
            outcomes,
            event.will_retry_until,
        )
    return None


def _trigger(
    event_id: str,
    queue_id: str,
    kind: Kind,
    at: datetime,
    outcomes: tuple[RecipientOutcome, ...],
) -> Trigger:
    return Trigger(event_id, queue_id, kind, at, outcomes)
