"""The continuous pull's book-keeping (libs/common/runtime/pull.py), without a server."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from libs.common.runtime.pull import GRACE_S, PullWindow


def test_asks_for_the_whole_window_then_waits_for_half() -> None:
    book = PullWindow(16, expires_s=5.0)
    assert book.ask(0.0) == 16
    for _ in range(16):
        book.received()
    assert book.ask(0.0) == 0  # all in hand
    for _ in range(7):
        book.settled()
    assert book.ask(0.0) == 0  # 7 free: less than half
    book.settled()
    assert book.ask(0.0) == 8


def test_an_unanswered_request_is_dropped_after_its_expiry() -> None:
    book = PullWindow(4, expires_s=5.0)
    book.ask(0.0)
    assert book.asked == 4
    book.expire(5.0 + GRACE_S - 0.01)
    assert book.asked == 4
    book.expire(5.0 + GRACE_S + 0.01)
    assert book.asked == 0 and book.ask(7.0) == 4


def test_a_status_ends_the_oldest_request() -> None:
    book = PullWindow(8, expires_s=5.0)
    book.ask(0.0)
    book.received()
    book.ended()
    assert book.asked == 0 and book.in_hand == 1
    assert book.ask(1.0) == 7


def test_a_window_of_one_is_not_left_idle() -> None:
    book = PullWindow(1, expires_s=1.0)
    assert book.ask(0.0) == 1
    book.received()
    book.settled()
    assert book.ask(0.0) == 1


def test_no_window_is_refused() -> None:
    with pytest.raises(ValueError):
        PullWindow(0, expires_s=1.0)


@given(st.lists(st.sampled_from(["ask", "recv", "settle", "end", "expire"]), max_size=200))
def test_never_more_asked_and_in_hand_than_the_window(steps: list[str]) -> None:
    book = PullWindow(10, expires_s=1.0)
    now = 0.0
    for step in steps:
        now += 0.3
        if step == "ask":
            book.ask(now)
        elif step == "recv" and book.asked:
            book.received()  # the server sends only what was asked
        elif step == "settle" and book.in_hand:
            book.settled()
        elif step == "end":
            book.ended()
        elif step == "expire":
            book.expire(now)
        assert 0 <= book.in_hand and 0 <= book.asked
        assert book.in_hand + book.asked <= book.window
