"""Decisions a worker takes before and during a transaction, as small pure functions."""

from __future__ import annotations

from typing import Literal

from libs.common.events import Destination
from services.delivery.core.replies import ENCRYPTION_NEEDED, NOT_IMPLEMENTED, Reply

TlsMode = Literal["opportunistic", "required", "none"]
TlsStep = Literal["starttls", "plain", "defer"]

# Destination kinds this worker can deliver to today.
SUPPORTED_KINDS = frozenset({"relay"})


def tls_step(mode: str, offered: bool) -> TlsStep:
    """What to do after EHLO, given `delivery.tls` and whether STARTTLS was offered."""
    if mode == "none":
        return "plain"
    if offered:
        return "starttls"
    return "defer" if mode == "required" else "plain"


def tls_missing(host: str) -> Reply:
    return Reply(0, f"TLS is required but {host} does not offer STARTTLS", ENCRYPTION_NEEDED)


def unsupported(destination: Destination) -> Reply | None:
    """A stand-in reply that defers jobs for destinations not implemented yet."""
    if destination.kind in SUPPORTED_KINDS:
        return None
    return Reply(
        0,
        f"delivery to {destination.kind} destinations is not implemented yet",
        NOT_IMPLEMENTED,
    )
