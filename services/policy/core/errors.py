"""Everything policy raises on purpose, under one root and grouped by what went wrong.

    MailbusError (libs/common/contract/errors.py)
    └── PolicyError
        ├── AddressError         a text that is no SMTP path
        ├── RecordFormatError    a stored record that does not parse: it counts,
        │   │                    grants, blocks nothing
        │   └── BlockFormatError, GrantFormatError, CountFormatError
        ├── Unavailable          shared state a decision needs cannot be read now;
        │   │                    `decision` is the temporary refusal policy answers with
        │   └── LimitsUnavailable, GrantsUnavailable
        └── ContentionError      a compare-and-set write kept losing to other writers

Pure: the adapters raise the I/O ones, the core names them and their replies.
"""

from __future__ import annotations

from typing import ClassVar

from libs.common.contract import replies
from libs.common.contract.errors import MailbusError
from libs.common.contract.policy import PolicyDecision


class PolicyError(MailbusError):
    """The root of policy's errors."""


class AddressError(PolicyError, ValueError):
    """The text is not a syntactically valid SMTP path; `reason` says where it breaks."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class RecordFormatError(PolicyError, ValueError):
    """A stored record that cannot be read; it is ignored (and overwritten when due)."""


class BlockFormatError(RecordFormatError):
    """A stored block that cannot be read; it blocks nothing."""


class GrantFormatError(RecordFormatError):
    """A stored grant that cannot be read; it grants nothing."""


class CountFormatError(RecordFormatError):
    """A stored count that cannot be read; counting starts over."""


class Unavailable(PolicyError):
    """Shared state a limit or a relay check needs could not be read.

    Policy answers with a temporary refusal instead of guessing: a limit that
    cannot be read is not taken to be under its bound.
    """

    decision: ClassVar[PolicyDecision]


class LimitsUnavailable(Unavailable):
    """A fact a limit needs (a count, a block, failed logins) could not be looked up."""

    decision = PolicyDecision.of(replies.LIMITS_UNAVAILABLE, "limits_unavailable")


class GrantsUnavailable(Unavailable):
    """The POP3-before-SMTP grants could not be looked up."""

    decision = PolicyDecision.of(replies.GRANTS_UNAVAILABLE, "pop3_grants_unavailable")


class ContentionError(PolicyError):
    """Too many concurrent writers on one key; the caller retries later."""
