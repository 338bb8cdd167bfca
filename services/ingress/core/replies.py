"""SMTP reply texts: every 2xx/4xx/5xx reply carries an RFC 3463 enhanced status code.

aiosmtpd writes many of its own replies without one ("503 Error: need MAIL
command"); `enhance` adds the code RFC 3463 / RFC 5248 give for that reply code,
so a client sees the same shape whether the library or policy answered.
"""

from __future__ import annotations

import re

_HAS_STATUS = re.compile(r"[245]\.\d{1,3}\.\d{1,3}(?: |$)")

# The usual enhanced status of each basic reply code (RFC 5248's registry).
DEFAULT_STATUS: dict[int, str] = {
    211: "2.0.0",
    214: "2.0.0",
    220: "2.0.0",
    221: "2.0.0",
    235: "2.7.0",
    250: "2.0.0",
    251: "2.1.5",
    252: "2.5.0",
    421: "4.3.0",
    450: "4.2.0",
    451: "4.3.0",
    452: "4.3.1",
    454: "4.7.0",
    500: "5.5.2",
    501: "5.5.4",
    502: "5.5.1",
    503: "5.5.1",
    504: "5.5.4",
    521: "5.3.2",
    530: "5.7.0",
    534: "5.7.9",
    535: "5.7.8",
    538: "5.7.11",
    550: "5.0.0",
    551: "5.1.6",
    552: "5.3.4",
    553: "5.1.3",
    554: "5.0.0",
    555: "5.5.4",
}

SHUTTING_DOWN = "421 4.3.2 Service shutting down, closing transmission channel"
INTERNAL_ERROR = "451 4.3.0 Internal error, try again later"
QUEUE_UNAVAILABLE = "451 4.3.0 Queue unavailable, try again later"
LINE_TOO_LONG = "500 5.5.2 Line too long (see RFC 5321 section 4.5.3.1.6)"


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
    return f"{code} {status} {message}"


def closing_reply(code: int, status: str, message: str) -> str:
    """A temporary refusal that ends the session must be 421 (RFC 5321 section 3.8)."""
    if code // 100 == 4:
        code = 421
    return format_reply(code, status, message)


def too_big(limit: int) -> str:
    """DATA past max_message_size: nothing of it was kept (RFC 1870's 552 with 5.3.4)."""
    return f"552 5.3.4 Message size exceeds the limit of {limit} bytes; nothing was stored"


def accepted(qid: str) -> str:
    return f"250 2.0.0 Ok: queued as {qid}"
