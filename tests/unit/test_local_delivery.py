"""Local delivery's core: the added headers, the quota decision, LMTP's per-recipient replies."""

from __future__ import annotations

import pytest

from services.delivery.core.local import (
    MAILBOX_FULL,
    delivery_headers,
    lmtp_replies,
    quota_reply,
)
from services.delivery.core.replies import Reply


@pytest.mark.parametrize(
    ("mail_from", "rcpt", "headers"),
    [
        (
            "alice@example.test",
            "bob@example.test",
            b"Return-Path: <alice@example.test>\r\nDelivered-To: bob@example.test\r\n",
        ),
        ("", "bob@example.test", b"Return-Path: <>\r\nDelivered-To: bob@example.test\r\n"),
        (
            "evil@x.test\r\nBcc: victim@x.test",
            "bob@example.test",
            b"Return-Path: <evil@x.testBcc: victim@x.test>\r\nDelivered-To: bob@example.test\r\n",
        ),
    ],
)
def test_delivery_headers(mail_from: str, rcpt: str, headers: bytes) -> None:
    assert delivery_headers(mail_from, rcpt) == headers


@pytest.mark.parametrize(
    ("used", "incoming", "quota", "reply"),
    [
        (0, 10**9, 0, None),  # no quota
        (0, 100, 100, None),  # exactly full is still in
        (50, 50, 100, None),
        (50, 51, 100, MAILBOX_FULL),
        (0, 101, 100, MAILBOX_FULL),  # alone too big: deferred as well, the user may raise it
        (200, 1, 100, MAILBOX_FULL),  # over already (quota lowered)
    ],
)
def test_quota(used: int, incoming: int, quota: int, reply: Reply | None) -> None:
    assert quota_reply(used, incoming, quota) == reply


def test_mailbox_full_is_a_deferral_with_4_2_2() -> None:
    assert MAILBOX_FULL.outcome == "deferred"
    assert MAILBOX_FULL.enhanced_status == "4.2.2"
    assert MAILBOX_FULL.code == 452


OK = Reply(250, "2.1.0 Ok")
RCPT_OK = Reply(250, "2.1.5 Ok")
NO_USER = Reply(550, "5.1.1 No such user")
FULL = Reply(452, "4.2.2 Mailbox full")
STORED = Reply(250, "2.0.0 Saved")
BROKEN = Reply(0, "LMTP connection lost", "4.4.2")


@pytest.mark.parametrize(
    ("mail", "rcpts", "data", "count", "broken", "want"),
    [
        # every recipient accepted, one reply each after DATA, in RCPT order
        (OK, [RCPT_OK, RCPT_OK], [STORED, FULL], 2, None, [STORED, FULL]),
        # a refusal at RCPT takes no reply after DATA
        (OK, [NO_USER, RCPT_OK, RCPT_OK], [FULL, STORED], 3, None, [NO_USER, FULL, STORED]),
        # MAIL refused: that reply for everyone
        (Reply(451, "4.3.0 Try later"), [], [], 2, None, [Reply(451, "4.3.0 Try later")] * 2),
        # the connection broke after the first reply to DATA
        (OK, [RCPT_OK, RCPT_OK], [STORED], 2, BROKEN, [STORED, BROKEN]),
        # broke during RCPT: the unreached recipient gets the break
        (OK, [NO_USER], [], 2, BROKEN, [NO_USER, BROKEN]),
        # never got as far as MAIL
        (None, [], [], 2, BROKEN, [BROKEN, BROKEN]),
        # everyone refused at RCPT: no DATA at all
        (OK, [NO_USER, NO_USER], [], 2, None, [NO_USER, NO_USER]),
    ],
)
def test_lmtp_replies(
    mail: Reply | None,
    rcpts: list[Reply],
    data: list[Reply],
    count: int,
    broken: Reply | None,
    want: list[Reply],
) -> None:
    assert lmtp_replies(mail, rcpts, data, count, broken) == want


def test_lmtp_without_a_break_reply_still_defers() -> None:
    (reply,) = lmtp_replies(OK, [RCPT_OK], [], 1)
    assert reply.outcome == "deferred" and reply.enhanced_status == "4.4.2"
