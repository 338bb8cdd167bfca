"""SMTP replies as ingress writes them: every 2xx/4xx/5xx reply carries an RFC 3463 status.

The texts are the contract's one table of what mailbus sends
(libs/common/contract/replies.py); here they become the lines ingress pushes.
aiosmtpd writes many of its own replies without a status ("503 Error: need
MAIL command"); `enhance` adds the default status of the reply code, so a
client sees the same shape whether the library or policy answered.
"""

from __future__ import annotations

import re

from libs.common.contract import replies
from libs.common.contract.replies import DEFAULT_STATUS, SmtpReply

_HAS_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |$)")

SHUTTING_DOWN = str(replies.SHUTTING_DOWN)
INTERNAL_ERROR = str(replies.INTERNAL_ERROR)
QUEUE_UNAVAILABLE = str(replies.QUEUE_UNAVAILABLE)
LINE_TOO_LONG = str(replies.LINE_TOO_LONG)


def enhance(reply: str) -> str:
    """Add the enhanced status code to one reply line that lacks it."""
    if len(reply) < 3 or not reply[:3].isdigit():
        return reply
    code = int(reply[:3])
    if code // 100 not in (2, 4, 5):
        return reply  # 3xx intermediate replies (354, 334) carry none
    sep, text = reply[3:4] or " ", reply[4:]
    if _HAS_STATUS.match(text):
        return reply
    status = DEFAULT_STATUS.get(code, f"{code // 100}.0.0")
    return f"{code}{sep}{status} {text}".rstrip()


def format_reply(code: int, status: str, message: str) -> str:
    return str(SmtpReply(code, status, message))


def closing_reply(code: int, status: str, message: str) -> str:
    """A temporary refusal that ends the session must be 421 (RFC 5321 section 3.8)."""
    if code // 100 == 4:
        code = 421
    return format_reply(code, status, message)


def closing(reply: SmtpReply) -> str:
    return closing_reply(reply.code, reply.status, reply.text)


# A failure while greeting ends the session before it began: 421, not 451.
INTERNAL_ERROR_CLOSING = closing(replies.INTERNAL_ERROR)


def too_big(limit: int) -> str:
    """DATA past max_message_size, told after the final dot: nothing of it was kept."""
    return f"{replies.too_big(limit)}; nothing was stored"


def accepted(qid: str) -> str:
    return str(replies.queued(qid))
