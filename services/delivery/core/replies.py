"""SMTP replies as data: what a reply means for a recipient, and its RFC 3463 status.

This is the outbound table: how delivery reads what a remote server said. The
basic reply code decides the outcome (RFC 5321 section 4.2.1); the enhanced
status code is taken from the reply text when the server gives one (RFC 2034),
else derived from the basic code so every result event carries one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from libs.common.contract.replies import DEFAULT_STATUS

Outcome = Literal["succeeded", "deferred", "failed"]

_ENHANCED = re.compile(r"^\s*([245])\.(\d{1,3})\.(\d{1,3})(?=\s|$)")

# How a reply without an enhanced status is read: by its basic code, with the default
# of the one table of statuses (the contract's, which ingress sends with) for the codes
# whose meaning does not depend on what was asked. Every other code (a 500, a 530 with
# no status) says too little of its subject and is read as X.0.0.
_READ_AS: dict[int, str] = {
    **{code: DEFAULT_STATUS[code] for code in (421, 450, 451, 452, 551, 553, 554)},
    # A remote server's 550 and 552 answer RCPT or DATA, so they speak of the mailbox;
    # the 550 and 552 mailbus sends do not (552 only for a message too big, 5.3.4).
    550: "5.2.0",  # mailbox unavailable
    552: "5.2.2",  # mailbox full: exceeded storage allocation
}

# No reply at all (connection refused, timeout, lost): RFC 3463 network statuses.
CONNECT_FAILED = "4.4.1"  # no answer from host
CONNECTION_LOST = "4.4.2"  # bad connection
ENCRYPTION_NEEDED = "4.7.10"  # RFC 5248 registry: TLS required but not available
TLS_FAILED = "4.7.5"  # cryptographic failure (the TLS handshake)
AUTH_FAILED = "4.7.0"  # our login at the relay host was refused: an operator's fix
NOT_IMPLEMENTED = "4.3.0"
PROTOCOL_ERROR = "4.5.0"


@dataclass(frozen=True)
class Reply:
    """A server reply, or a stand-in for one when the failure happened before any reply.

    `code` 0 means no reply was received; such stand-ins carry their own `status`.
    """

    code: int
    text: str = ""
    status: str | None = None

    @property
    def outcome(self) -> Outcome:
        if self.code == 0:
            # No server said it: a stand-in fails only when we know for sure (a
            # domain that does not exist, a null MX); anything else is retried.
            return "failed" if (self.status or "").startswith("5.") else "deferred"
        return classify(self.code)

    @property
    def enhanced_status(self) -> str:
        return self.status or enhanced_status(self.code, self.text)


def classify(code: int) -> Outcome:
    if 200 <= code < 300:
        return "succeeded"
    if 500 <= code < 600:
        return "failed"
    # 4xx, and anything a well-behaved server should not send here: try again later.
    return "deferred"


def enhanced_status(code: int, text: str) -> str:
    klass = {"succeeded": "2", "deferred": "4", "failed": "5"}[classify(code)]
    match = _ENHANCED.match(text)
    if match:
        # The basic code decides the class (RFC 3463 asks them to agree; when a server
        # disagrees, keep its subject and detail but not its class).
        return f"{klass}.{match.group(2)}.{match.group(3)}"
    if code in _READ_AS:
        return _READ_AS[code]
    if 200 <= code < 300 or 400 <= code < 600:
        return f"{klass}.0.0"
    return PROTOCOL_ERROR
