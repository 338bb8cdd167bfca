"""Decisions a worker takes before and during a transaction, as small pure functions."""

from __future__ import annotations

from typing import Literal

from libs.common.contract.events import Destination
from services.delivery.core.replies import NOT_IMPLEMENTED, TLS_FAILED, Reply

TlsMode = Literal["opportunistic", "required", "verify", "none"]
# Levels that never send mail in plain text.
ENCRYPTED_ONLY = frozenset({"required", "verify"})
TlsStep = Literal["starttls", "plain", "defer"]

# Destination kinds this worker can deliver to today (local mailboxes come later).
SUPPORTED_KINDS = frozenset({"relay", "mx"})


def tls_step(mode: str, offered: bool) -> TlsStep:
    """What to do after EHLO, given `delivery.tls` and whether STARTTLS was offered."""
    if mode == "none":
        return "plain"
    if offered:
        return "starttls"
    return "defer" if mode in ENCRYPTED_ONLY else "plain"


def retry_in_plain_text(mode: str, broken: Reply | None) -> bool:
    """Opportunistic TLS whose handshake failed gets one more connection without TLS:
    a server with a broken TLS set-up still gets its mail, as with Postfix's "may"."""
    return mode == "opportunistic" and broken is not None and broken.status == TLS_FAILED


def unsupported(destination: Destination) -> Reply | None:
    """A stand-in reply that defers jobs for destinations not implemented yet."""
    if destination.kind in SUPPORTED_KINDS:
        return None
    return Reply(
        0,
        f"delivery to {destination.kind} destinations is not implemented yet",
        NOT_IMPLEMENTED,
    )
