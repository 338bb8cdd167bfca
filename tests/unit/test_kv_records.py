"""The records kept in KV and streams, byte for byte as the hand-written codecs wrote them.

Replicas of two versions share the buckets during a rolling upgrade, so what is
written must stay exactly what was written before, and what was written before
must still be read.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from libs.common.contract.records import Record
from libs.common.mail.mailbox import MailboxEntry
from services.policy.core import (
    Block,
    BlockFormatError,
    CountFormatError,
    GrantFormatError,
    Pop3Grant,
    SlidingCount,
)
from services.policy.core.failures import FailedLogins

START = datetime(2026, 3, 1, 12, 30, 15, tzinfo=UTC)
END = datetime(2026, 3, 1, 13, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))

GOLDEN: list[tuple[Record, bytes]] = [
    (
        Block(client_ip="2001:db8::1", reason="4 «x»", rule="r", start=START, end=END),
        b'{"client_ip": "2001:db8::1", "end": "2026-03-01T13:30:15.123456+02:00", '
        b'"reason": "4 \\u00abx\\u00bb", "rule": "r", "start": "2026-03-01T12:30:15+00:00"}',
    ),
    (
        Pop3Grant(client_ip="192.0.2.1", user="a@x.test", granted_at=START, expires_at=END),
        b'{"client_ip": "192.0.2.1", "expires_at": "2026-03-01T13:30:15.123456+02:00", '
        b'"granted_at": "2026-03-01T12:30:15+00:00", "user": "a@x.test"}',
    ),
    (
        FailedLogins(count=3, first_at=START, last_at=END),
        b'{"count": 3, "first_at": "2026-03-01T12:30:15+00:00", '
        b'"last_at": "2026-03-01T13:30:15.123456+02:00"}',
    ),
    # Slots by number, not as text: 99 before 100.
    (SlidingCount(slots={100: 2, 99: 1}), b'{"99": 1, "100": 2}'),
    # Fields in their order, and no `seq`: the stream gives it.
    (
        MailboxEntry(seq=7, uid="Q1.abc", size=1234, queue_id="Q1"),
        b'{"uid": "Q1.abc", "size": 1234, "queue_id": "Q1"}',
    ),
]


@pytest.mark.parametrize(("record", "stored"), GOLDEN)
def test_written_as_before(record: Record, stored: bytes) -> None:
    assert record.encode() == stored


@pytest.mark.parametrize(("record", "stored"), GOLDEN[:4])
def test_read_as_before(record: Record, stored: bytes) -> None:
    assert type(record).decode(stored) == record


def test_a_mailbox_entry_takes_its_place_from_the_stream() -> None:
    stored = GOLDEN[4][1]
    assert MailboxEntry.read(9, stored) == MailboxEntry(
        seq=9, uid="Q1.abc", size=1234, queue_id="Q1"
    )
    assert MailboxEntry.read(9, b'{"uid": "Q1.abc", "size": 1234}') is None  # no queue id
    assert MailboxEntry.read(9, b"\xff") is None


NAIVE = b'"start": "2026-03-01T12:30:15", "end": "2026-03-01T13:30:15+00:00"'


@pytest.mark.parametrize(
    ("kind", "error", "stored"),
    [
        (
            Block,
            BlockFormatError,
            b"{" + b'"client_ip": "x", "reason": "r", "rule": "r", ' + NAIVE + b"}",
        ),
        (Block, BlockFormatError, b'{"client_ip": "x"}'),
        (Pop3Grant, GrantFormatError, b"not json"),
        (SlidingCount, CountFormatError, b"[1, 2]"),
        (SlidingCount, CountFormatError, b'{"slot": 1}'),
    ],
)
def test_unreadable_records_raise_their_own_error(
    kind: type[Record], error: type[Exception], stored: bytes
) -> None:
    with pytest.raises(error, match=f"unreadable {kind.__name__}"):
        kind.decode(stored)


def test_extra_keys_of_a_newer_writer_are_ignored() -> None:
    stored = GOLDEN[1][1][:-1] + b', "listener": "pop3"}'
    assert Pop3Grant.decode(stored) == GOLDEN[1][0]
