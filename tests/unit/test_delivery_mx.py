"""MX ordering, routes from DNS answers, and when to move on to the next address."""

from __future__ import annotations

import random

import pytest

from services.delivery.core.mx import (
    Endpoint,
    MxRecord,
    endpoints,
    is_null_mx,
    mx_problem,
    no_addresses,
    null_mx,
    order_mx,
    try_next_address,
)
from services.delivery.core.plan import retry_in_plain_text
from services.delivery.core.replies import Reply
from services.delivery.core.transaction import Transcript

OK = Reply(250, "ok")


def mx(*pairs: tuple[int, str]) -> list[MxRecord]:
    return [MxRecord(p, h) for p, h in pairs]


@pytest.mark.parametrize(
    ("records", "expected"),
    [
        (mx((20, "b.test"), (10, "a.test")), ["a.test", "b.test"]),
        (mx((10, "a.test"), (10, "a.test"), (5, "z.test")), ["z.test", "a.test"]),
        (mx((0, ""), (10, "a.test")), ["a.test"]),  # a stray "." among real MX
        ([], []),
    ],
)
def test_order_by_preference(records: list[MxRecord], expected: list[str]) -> None:
    assert order_mx(records, random.Random(1)) == expected


def test_equal_preferences_are_shuffled_but_stay_behind_better_ones() -> None:
    records = mx((10, "a.test"), (10, "b.test"), (10, "c.test"), (20, "backup.test"))
    seen = {tuple(order_mx(records, random.Random(seed))) for seed in range(40)}
    assert len({order[:3] for order in seen}) > 1  # the order among equals varies
    assert all(order[3] == "backup.test" for order in seen)
    assert all(sorted(order[:3]) == ["a.test", "b.test", "c.test"] for order in seen)


@pytest.mark.parametrize(
    ("records", "null"),
    [(mx((0, "")), True), (mx((0, ""), (10, "a.test")), False), (mx((10, "a.test")), False)],
)
def test_null_mx(records: list[MxRecord], null: bool) -> None:
    assert is_null_mx(records) is null


def test_endpoints_keep_order_skip_duplicates_and_stop_at_the_limit() -> None:
    hosts = [("a.test", ["10.0.0.1", "::1"]), ("b.test", ["10.0.0.1", "10.0.0.2"])]
    assert endpoints(hosts, 25, limit=3) == (
        Endpoint("a.test", "10.0.0.1", 25),
        Endpoint("a.test", "::1", 25),
        Endpoint("b.test", "10.0.0.2", 25),
    )
    assert Endpoint("a.test", "10.0.0.1", 25).label == "a.test[10.0.0.1]"
    assert Endpoint("10.0.0.1", "10.0.0.1", 25).label == "10.0.0.1"


@pytest.mark.parametrize(
    ("route", "outcome", "status"),
    [
        (null_mx("r.test"), "failed", "5.1.10"),
        (mx_problem("r.test", "nxdomain"), "failed", "5.1.2"),
        (mx_problem("r.test", "nodata"), "failed", "5.4.4"),
        (mx_problem("r.test", "tempfail", "timed out"), "deferred", "4.4.3"),
        (no_addresses("r.test", ["mx.r.test"], tempfail=True), "deferred", "4.4.3"),
        (no_addresses("r.test", ["mx.r.test"], tempfail=False), "deferred", "4.4.4"),
    ],
)
def test_routing_failures(route: object, outcome: str, status: str) -> None:
    reply = route.reply  # type: ignore[attr-defined]
    assert (reply.outcome, reply.enhanced_status, reply.code) == (outcome, status, 0)


@pytest.mark.parametrize(
    ("transcript", "next_one"),
    [
        (Transcript(broken=Reply(0, "connection refused", "4.4.1")), True),
        (Transcript(mail=Reply(421, "busy")), True),
        (Transcript(mail=Reply(451, "later")), True),
        (Transcript(mail=Reply(550, "go away")), False),
        (Transcript(mail=OK, rcpts=(Reply(450, "greylisted"),)), False),
        (Transcript(mail=OK, rcpts=(OK,), data=OK), False),
        (Transcript(mail=OK, rcpts=(OK,), broken=Reply(0, "lost", "4.4.2")), False),
    ],
)
def test_try_next_address(transcript: Transcript, next_one: bool) -> None:
    assert try_next_address(transcript) is next_one


@pytest.mark.parametrize(
    ("mode", "broken", "retry"),
    [
        ("opportunistic", Reply(0, "handshake", "4.7.5"), True),
        ("required", Reply(0, "handshake", "4.7.5"), False),
        ("opportunistic", Reply(0, "refused", "4.4.1"), False),
        ("opportunistic", None, False),
    ],
)
def test_plain_text_retry_after_a_failed_handshake(
    mode: str, broken: Reply | None, retry: bool
) -> None:
    assert retry_in_plain_text(mode, broken) is retry
