"""Counts over a sliding window, kept as per-slot counts so one KV value holds them.

An exact sliding hour would need the time of every event; per-minute slots
bound the value at 61 entries whatever the rate. A slot is counted until one
window length after its *end*, so every event of the last hour always counts
and an event leaves the count at most one slot width late: a limit is never
exceeded within any hour, and a refusal lasts at most a minute longer than an
exact window would make it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Self

from pydantic import Field

from libs.common.contract.records import Record
from services.policy.core.errors import CountFormatError


@dataclass(frozen=True)
class Window:
    length: timedelta = timedelta(hours=1)
    slot: timedelta = timedelta(minutes=1)

    def slot_of(self, now: datetime) -> int:
        return int(now.timestamp() // self.slot.total_seconds())

    def slot_end(self, index: int) -> datetime:
        return datetime.fromtimestamp((index + 1) * self.slot.total_seconds(), UTC)

    def counts_at(self, index: int, now: datetime) -> bool:
        return now < self.slot_end(index) + self.length

    @property
    def retention(self) -> timedelta:
        """How long a stored count can still matter after its last update."""
        return self.length + self.slot


HOUR = Window()


class SlidingCount(Record):
    """Events per slot index (seconds since the epoch // slot width)."""

    slots: dict[int, int] = Field(default_factory=dict)

    unreadable = CountFormatError

    def total(self, window: Window, now: datetime) -> int:
        return sum(n for i, n in self.slots.items() if window.counts_at(i, now))

    def add(self, window: Window, now: datetime, n: int = 1) -> SlidingCount:
        """The count with `n` more events now; slots that no longer count are dropped."""
        kept = {i: c for i, c in self.slots.items() if window.counts_at(i, now)}
        index = window.slot_of(now)
        kept[index] = kept.get(index, 0) + n
        return SlidingCount(slots=kept)

    def below_at(self, window: Window, now: datetime, limit: int) -> datetime:
        """When the count will be under `limit` again (now, if it is already)."""
        live = sorted((i, c) for i, c in self.slots.items() if window.counts_at(i, now))
        total = sum(c for _, c in live)
        when = now
        for index, count in live:
            if total < limit:
                break
            total -= count
            when = window.slot_end(index) + window.length
        return when

    def stored(self) -> dict[str, Any]:
        """Stored as the slots alone, oldest first: {"<slot index>": count, ...}."""
        return {str(i): c for i, c in sorted(self.slots.items())}

    @classmethod
    def from_stored(cls, raw: Any) -> Self:
        return cls.model_validate({"slots": raw})
