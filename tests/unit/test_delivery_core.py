"""The delivery core: reply classification, status derivation, per-recipient results."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from libs.common.contract.events import (
    DeliveryAttempted,
    DeliveryDeferred,
    DeliveryFailed,
    DeliveryJob,
    DeliverySucceeded,
    Destination,
    Recipient,
)
from services.delivery.core import (
    Reply,
    Transcript,
    classify,
    enhanced_status,
    replies_for,
    result_events,
    tls_step,
    unsupported,
)

NOW = datetime(2026, 11, 28, 3, 30, tzinfo=UTC)

OK = Reply(250, "2.1.5 OK")
DATA_OK = Reply(250, "2.0.0 queued as 123")
DATA_TEMP = Reply(451, "4.3.0 try later")
LOST = Reply(0, "connection lost", "4.4.2")


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (250, "succeeded"),
        (251, "succeeded"),
        (421, "deferred"),
        (450, "deferred"),
        (451, "deferred"),
        (452, "deferred"),
        (500, "failed"),
        (550, "failed"),
        (554, "failed"),
        (0, "deferred"),
        (354, "deferred"),
        (199, "deferred"),
        (600, "deferred"),
    ],
)
def test_classify(code: int, outcome: str) -> None:
    assert classify(code) == outcome


@pytest.mark.parametrize(
    ("code", "text", "status"),
    [
        # the server's enhanced code wins
        (250, "2.1.5 Recipient OK", "2.1.5"),
        (550, "5.1.1 <bob@x.test>: user unknown", "5.1.1"),
        (451, "4.7.1 greylisted, try again", "4.7.1"),
        (552, "5.3.4 message too big", "5.3.4"),
        (550, "5.7.26 multi-digit detail", "5.7.26"),
        (550, "  5.1.1 leading spaces", "5.1.1"),
        (250, "2.0.0", "2.0.0"),
        # class disagreeing with the basic code: the basic code decides the class
        (550, "4.1.1 confused server", "5.1.1"),
        (451, "2.0.0 confused server", "4.0.0"),
        # no enhanced code: derived from the basic code
        (250, "OK", "2.0.0"),
        (421, "closing", "4.3.2"),
        (450, "mailbox busy", "4.2.0"),
        (451, "local error", "4.3.0"),
        (452, "storage", "4.3.1"),
        (453, "unknown 4xx", "4.0.0"),
        (550, "no such user", "5.2.0"),
        (551, "not local", "5.1.6"),
        (552, "quota", "5.2.2"),
        (553, "bad name", "5.1.3"),
        (554, "failed", "5.0.0"),
        (530, "auth required", "5.0.0"),
        # things that only look like an enhanced code
        (550, "5.1.1x not a code", "5.2.0"),
        (550, "user 5.1.1 unknown", "5.2.0"),
        (0, "", "4.5.0"),
    ],
)
def test_enhanced_status(code: int, text: str, status: str) -> None:
    assert enhanced_status(code, text) == status


def test_stand_in_reply_keeps_its_own_status() -> None:
    assert Reply(0, "connect refused", "4.4.1").enhanced_status == "4.4.1"
    assert Reply(0, "connect refused", "4.4.1").outcome == "deferred"


@pytest.mark.parametrize(
    ("transcript", "count", "expected"),
    [
        # everything accepted: the DATA reply speaks for all
        (
            Transcript(mail=OK, rcpts=(OK, OK, OK), data=DATA_OK),
            3,
            [DATA_OK, DATA_OK, DATA_OK],
        ),
        # one refused permanently, one temporarily, one accepted
        (
            Transcript(
                mail=OK,
                rcpts=(Reply(550, "5.1.1 unknown"), Reply(451, "4.2.0 busy"), OK),
                data=DATA_OK,
            ),
            3,
            [Reply(550, "5.1.1 unknown"), Reply(451, "4.2.0 busy"), DATA_OK],
        ),
        # MAIL refused: its reply for everyone
        (
            Transcript(mail=Reply(553, "5.1.8 bad sender")),
            2,
            [Reply(553, "5.1.8 bad sender")] * 2,
        ),
        # DATA refused: the accepted recipients get the DATA reply
        (
            Transcript(mail=OK, rcpts=(Reply(550, "no"), OK), data=DATA_TEMP),
            2,
            [Reply(550, "no"), DATA_TEMP],
        ),
        # connection never made
        (Transcript(broken=Reply(0, "refused", "4.4.1")), 2, [Reply(0, "refused", "4.4.1")] * 2),
        # lost in the middle of RCPTs: the ones not reached get the break
        (
            Transcript(mail=OK, rcpts=(Reply(550, "no"),), broken=LOST),
            3,
            [Reply(550, "no"), LOST, LOST],
        ),
        # lost while waiting for the DATA reply
        (Transcript(mail=OK, rcpts=(OK, OK), broken=LOST), 2, [LOST, LOST]),
    ],
)
def test_replies_for(transcript: Transcript, count: int, expected: list[Reply]) -> None:
    assert replies_for(transcript, count) == expected


def test_missing_reply_without_break_defers() -> None:
    (reply,) = replies_for(Transcript(mail=OK), 1)
    assert reply.outcome == "deferred"


@pytest.mark.parametrize(
    ("rcpts", "needs_data"),
    [((OK, Reply(550, "no")), True), ((Reply(550, "no"), Reply(451, "later")), False), ((), False)],
)
def test_data_only_when_someone_was_accepted(rcpts: tuple[Reply, ...], needs_data: bool) -> None:
    assert Transcript(mail=OK, rcpts=rcpts).needs_data is needs_data


def test_result_events() -> None:
    job = DeliveryJob(
        job_id="Q1.a1.d0",
        queue_id="Q1",
        attempt=1,
        destination=Destination(kind="relay"),
        mail_from="a@example.test",
        recipients=tuple(Recipient(address=a) for a in ("x@r.test", "y@r.test", "z@r.test")),
        size=10,
    )
    replies = [DATA_OK, Reply(451, "try later"), Reply(550, "5.1.1 unknown")]
    made = result_events(
        job, replies, remote_host="relay.test", tls_version="TLSv1.3", worker="w1", now=NOW
    )
    # a job without one_result (an older queue's): one event per recipient
    assert [type(e) for e in made] == [DeliverySucceeded, DeliveryDeferred, DeliveryFailed]
    events = [e for e in made if not isinstance(e, DeliveryAttempted)]
    assert [e.event_id for e in events] == ["Q1.a1.d0.r0", "Q1.a1.d0.r1", "Q1.a1.d0.r2"]
    assert [e.recipient for e in events] == ["x@r.test", "y@r.test", "z@r.test"]
    assert [(e.reply_code, e.status) for e in events] == [
        (250, "2.0.0"),
        (451, "4.3.0"),
        (550, "5.1.1"),
    ]
    assert all(e.remote_host == "relay.test" and e.tls_version == "TLSv1.3" for e in events)
    assert all(e.job_id == "Q1.a1.d0" and e.attempt == 1 and e.queue_id == "Q1" for e in events)


@pytest.mark.parametrize(
    ("mode", "offered", "step"),
    [
        ("opportunistic", True, "starttls"),
        ("opportunistic", False, "plain"),
        ("required", True, "starttls"),
        ("required", False, "defer"),
        ("none", True, "plain"),
        ("none", False, "plain"),
    ],
)
def test_tls_step(mode: str, offered: bool, step: str) -> None:
    assert tls_step(mode, offered) == step


@pytest.mark.parametrize(
    ("destination", "supported"),
    [
        (Destination(kind="relay"), True),
        (Destination(kind="mx", domain="r.test"), True),
        (Destination(kind="local", domain="example.test"), False),
    ],
)
def test_unsupported_destinations_defer(destination: Destination, supported: bool) -> None:
    reply = unsupported(destination)
    if supported:
        assert reply is None
    else:
        assert reply is not None
        assert reply.outcome == "deferred"
        assert reply.enhanced_status.startswith("4.")
        assert "not implemented yet" in reply.text
