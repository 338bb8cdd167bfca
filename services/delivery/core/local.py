"""Local delivery decisions: the headers a final delivery adds, quota, LMTP replies.

A message stored in a mailbox is no longer in transit, so, as Postfix's
local(8) and Dovecot do, it gets a Return-Path (the envelope sender, RFC 5322
section 3.6.7) and a Delivered-To (the mailbox; also how loops are spotted)
at its top.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.delivery.core.replies import CONNECTION_LOST, Reply

DELIVERED = Reply(250, "2.0.0 Delivered to mailbox")
MAILBOX_FULL = Reply(452, "4.2.2 Mailbox full")
STORE_UNAVAILABLE = Reply(0, "mailbox store unavailable", "4.3.0")
# RFC 5321 section 4.5.3.1.8: header lines are at most 998 octets.
MAX_HEADER_LINE = 998


def _clean(value: str) -> str:
    """Header values from the envelope: no line break may smuggle a second header in."""
    return "".join(ch for ch in value if ch not in "\r\n\x00")


def delivery_headers(mail_from: str, recipient: str) -> bytes:
    """Return-Path and Delivered-To; the null sender is `<>` (RFC 5321 section 4.4)."""
    lines = [f"Return-Path: <{_clean(mail_from)}>", f"Delivered-To: {_clean(recipient)}"]
    return b"".join(line.encode()[:MAX_HEADER_LINE] + b"\r\n" for line in lines)


def quota_reply(used: int, incoming: int, quota: int) -> Reply | None:
    """The refusal when the message would take the mailbox past its quota (0 = none).

    452 4.2.2 defers: the user may make room, and the queue turns a deferral that
    lasts until queue.bounce_after into a failure report."""
    if quota <= 0 or used + incoming <= quota:
        return None
    return MAILBOX_FULL


def lmtp_replies(
    mail: Reply | None,
    rcpts: Sequence[Reply],
    data: Sequence[Reply],
    count: int,
    broken: Reply | None = None,
) -> list[Reply]:
    """One reply per recipient from an LMTP transaction (RFC 2033 section 4.2).

    After DATA the server answers once per recipient it accepted at RCPT, in
    RCPT order; a refused MAIL speaks for everyone; a recipient the conversation
    never reached gets the break, so nothing is lost or bounced on a hang-up.
    """
    fallback = broken or Reply(0, "LMTP conversation ended early", CONNECTION_LOST)
    if mail is None:
        return [fallback] * count
    if mail.outcome != "succeeded":
        return [mail] * count
    out: list[Reply] = []
    after_data = iter(data)
    for index in range(count):
        if index >= len(rcpts):
            out.append(fallback)
            continue
        rcpt = rcpts[index]
        if rcpt.outcome != "succeeded":
            out.append(rcpt)
            continue
        out.append(next(after_data, fallback))
    return out
