"""Ingress's errors, under one root: each is a refusal and carries the SMTP reply it answers with.

The class fixes the reply's code and RFC 3463 enhanced status, the instance its
text, so whoever catches one sends `err.reply` and composes nothing. `str(err)`
is the text alone.
"""

from __future__ import annotations

from typing import ClassVar

from libs.common.contract.errors import MailbusError
from services.ingress.core.replies import format_reply


class IngressError(MailbusError):
    """An ingress refusal of no more particular kind: a local error, to be retried."""

    code: ClassVar[int] = 451
    status: ClassVar[str] = "4.3.0"

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.text = text

    @property
    def reply(self) -> str:
        return format_reply(self.code, self.status, self.text)


class DsnSyntaxError(IngressError, ValueError):
    """A DSN parameter of MAIL or RCPT that RFC 3461 section 4 does not allow."""

    code = 501
    status = "5.5.4"


class SaslError(IngressError):
    """An AUTH exchange broken off in its framing (RFC 4954): no credentials to check."""

    code = 501
    status = "5.5.2"


class UnknownMechanism(SaslError):
    """An AUTH mechanism ingress does not speak."""

    code = 504
    status = "5.5.4"


class AuthorizationRefused(SaslError):
    """AUTH PLAIN asking to act as someone other than the user it authenticates (RFC 4616
    section 2): mailbus lets nobody act for another account."""

    code = 535
    status = "5.7.8"
