"""The streams `ensure_topology` creates, pinned field by field.

A stream's config is applied with update_stream on every service start, so a
changed field changes the running system (retention, dedupe, TTLs): any change
here must be meant, never a side effect of tidying the code that builds them.
"""

from __future__ import annotations

import dataclasses

import pytest
from nats.js import api

from libs.common.runtime import bus

HOUR = 3600.0
LIMITS, WORK_QUEUE = api.RetentionPolicy.LIMITS, api.RetentionPolicy.WORK_QUEUE

# Every field that differs from a bare StreamConfig, per stream, with 1 replica.
EXPECTED: dict[str, dict[str, object]] = {
    "MAILBUS_EVENTS": {
        "subjects": ["mailbus.evt.>"],
        "retention": LIMITS,
        "duplicate_window": 2 * HOUR,
    },
    "MAILBUS_JOBS": {
        "subjects": ["mailbus.job.deliver.>"],
        "retention": WORK_QUEUE,
        "duplicate_window": 2 * HOUR,
    },
    "MAILBUS_TIMERS": {
        "subjects": ["mailbus.timer.>"],
        "retention": LIMITS,
        "duplicate_window": 2 * HOUR,
        "allow_msg_schedules": True,
        "allow_msg_ttl": True,
        "max_msgs_per_subject": 1,
    },
    "MAILBUS_ACCESS": {
        "subjects": ["mailbus.access.>"],
        "retention": LIMITS,
        "duplicate_window": 2 * HOUR,
        "max_age": 7 * 24 * HOUR,
    },
    "MAILBUS_MAILBOXES": {
        "subjects": ["mailbus.mbox.>"],
        "retention": LIMITS,
        "duplicate_window": 2 * HOUR,
    },
    "MAILBUS_MAILBOX_LOCKS": {
        "subjects": ["mailbus.mboxlock.>"],
        "retention": LIMITS,
        "allow_msg_ttl": True,
        "max_msgs_per_subject": 1,
    },
    # Bodies carry no message id: a retried write replaces the first copy.
    "MAILBUS_BODIES": {
        "subjects": ["mailbus.body.>"],
        "retention": LIMITS,
        "max_msgs_per_subject": 1,
        "allow_direct": True,
    },
    # Shadow-policy differences: kept a week, like the access events.
    "MAILBUS_SHADOW": {
        "subjects": ["mailbus.shadow.>"],
        "retention": LIMITS,
        "duplicate_window": 2 * HOUR,
        "max_age": 7 * 24 * HOUR,
    },
}


def _built(replicas: int) -> dict[str, api.StreamConfig]:
    return {cfg.name or "": cfg for cfg in bus.stream_configs(replicas)}


@pytest.mark.parametrize("replicas", [1, 3])
def test_stream_configs_field_by_field(replicas: int) -> None:
    built = _built(replicas)
    assert list(built) == list(EXPECTED)  # the order streams are created in, too
    bare = dataclasses.asdict(api.StreamConfig())
    for name, differs in EXPECTED.items():
        want = {
            **bare,
            "name": name,
            "storage": api.StorageType.FILE,
            "num_replicas": replicas,
            **differs,
        }
        got = dataclasses.asdict(built[name])
        mismatched = {f: (got[f], want[f]) for f in want if got[f] != want[f]}
        assert not mismatched, (name, mismatched)
