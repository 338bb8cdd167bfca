"""Which stored bodies are old enough to be checked for a MessageReceived."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from services.queue.core.orphans import StoredBody, old_enough

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(hours=1)


def test_only_bodies_past_the_grace_period_are_candidates() -> None:
    bodies = [
        StoredBody("young", NOW - timedelta(minutes=59)),
        StoredBody("exactly", NOW - GRACE),
        StoredBody("old", NOW - timedelta(days=2)),
        StoredBody("undated", None),
    ]
    assert old_enough(bodies, NOW, GRACE) == ["exactly", "old", "undated"]


def test_nothing_stored_nothing_to_check() -> None:
    assert old_enough([], NOW, GRACE) == []
