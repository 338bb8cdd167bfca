"""What a report needs from the original message's header, read without trusting it."""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, tzinfo
from email import policy
from email.header import decode_header, make_header
from email.parser import BytesHeaderParser
from email.utils import parsedate_to_datetime

_HEADER_END = re.compile(rb"\r?\n\r?\n")


@dataclass(frozen=True)
class OriginalHeaders:
    subject: str = ""
    message_id: str = ""
    content_type: str = "text/plain"
    auto_submitted: str = ""
    content_language: str = ""
    accept_language: str = ""
    timezone: tzinfo | None = None  # the sender's offset, from its Date header

    @property
    def is_report(self) -> bool:
        """A delivery or disposition report, or an automatic reply (RFC 3834).

        Only "auto-replied" counts: "auto-generated" mail (mailing lists, alerts)
        has senders that rely on bounces to clean their lists.
        """
        return self.content_type == "multipart/report" or self.auto_submitted.startswith(
            "auto-replied"
        )


def header_block(body: bytes) -> bytes:
    """The header section of a message, up to and including the blank line."""
    found = _HEADER_END.search(body)
    return body if found is None else body[: found.end()]


def read_headers(body: bytes) -> OriginalHeaders:
    parsed = BytesHeaderParser(policy=policy.compat32).parsebytes(header_block(body))
    return OriginalHeaders(
        subject=_decoded(parsed.get("Subject")),
        message_id=_text(parsed.get("Message-ID")),
        content_type=parsed.get_content_type(),
        auto_submitted=_text(parsed.get("Auto-Submitted")).lower(),
        content_language=_text(parsed.get("Content-Language")),
        accept_language=_text(parsed.get("Accept-Language")),
        timezone=_timezone(_text(parsed.get("Date"))),
    )


def _text(value: object) -> str:
    return " ".join(str(value).split()) if value is not None else ""


def _decoded(value: object) -> str:
    if value is None:
        return ""
    raw = str(value)
    try:
        return " ".join(str(make_header(decode_header(raw))).split())
    except (LookupError, ValueError, UnicodeError):
        return _text(raw)  # a broken encoded word: show it as it came


def _timezone(value: str) -> tzinfo | None:
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).tzinfo
    except (TypeError, ValueError, IndexError):
        return None


def as_local(moment: datetime, zone: tzinfo | None) -> datetime:
    return moment.astimezone(zone) if zone is not None else moment
