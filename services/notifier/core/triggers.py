"""Which events ask for a report, and what each one reports on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, TypeVar

from libs.common.contract.events import (
    AnyEvent,
    Event,
    MessageDelayed,
    MessageExpired,
    RecipientOutcome,
    RecipientsDelivered,
    RecipientsFailed,
)

Kind = Literal["failure", "delay", "success", "expiry"]

# What an event of an older shape (recipients without outcomes) stands for.
_EXPIRED_STATUS = "4.4.7"
_DELAYED_STATUS = "4.0.0"


def _older(
    recipients: tuple[str, ...], action: Literal["failed", "delayed"], status: str
) -> tuple[RecipientOutcome, ...]:
    return tuple(RecipientOutcome(address=a, action=action, status=status) for a in recipients)


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
    read = _READERS.get(type(event))
    return read(event) if read is not None else None


def _failed(event: RecipientsFailed) -> Trigger:
    return Trigger(event.event_id, event.queue_id, "failure", event.occurred_at, event.outcomes)


def _delayed(event: MessageDelayed) -> Trigger:
    outcomes = event.outcomes or _older(event.recipients, "delayed", _DELAYED_STATUS)
    return Trigger(
        event.event_id,
        event.queue_id,
        "delay",
        event.occurred_at,
        outcomes,
        event.will_retry_until,
    )


def _expired(event: MessageExpired) -> Trigger:
    outcomes = event.outcomes or _older(event.recipients, "failed", _EXPIRED_STATUS)
    return Trigger(event.event_id, event.queue_id, "expiry", event.occurred_at, outcomes)


def _delivered(event: RecipientsDelivered) -> Trigger:
    return Trigger(event.event_id, event.queue_id, "success", event.occurred_at, event.outcomes)


_E = TypeVar("_E", bound=Event)


def _row(
    cls: type[_E], read: Callable[[_E], Trigger]
) -> tuple[type[Event], Callable[[Any], Trigger]]:
    """One entry of the table; typed so that each reader matches its event class."""
    return cls, read


# The one list of the event types that ask for a report, with what each reports on;
# the notifier's consumer filters for TRIGGER_TYPES, read off this table.
_READERS: dict[type[Event], Callable[[Any], Trigger]] = dict(
    [
        _row(RecipientsFailed, _failed),
        _row(MessageDelayed, _delayed),
        _row(MessageExpired, _expired),
        _row(RecipientsDelivered, _delivered),
    ]
)

TRIGGER_TYPES: tuple[str, ...] = tuple(cls.__name__ for cls in _READERS)
