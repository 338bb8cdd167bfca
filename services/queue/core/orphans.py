"""Which stored bodies are orphans: old enough, and referred to by no MessageReceived.

Ingress stores a body first and publishes its MessageReceived second; a process
killed in between leaves a body that no event will ever refer to. The grace
period is far longer than ingress ever takes between the two (a few publish
retries), so a body whose event is merely on its way is never taken for one.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta


@dataclass(frozen=True)
class StoredBody:
    name: str  # the queue id
    stored_at: datetime | None  # None: the store did not say; treated as old


def old_enough(bodies: list[StoredBody], now: datetime, grace: timedelta) -> list[str]:
    """The names of bodies stored at least `grace` ago: the ones worth a look-up."""
    return sorted(b.name for b in bodies if b.stored_at is None or now - b.stored_at >= grace)
