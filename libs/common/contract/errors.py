"""The root of every error mailbus raises on purpose.

Each service groups its own errors under one root of its own (`IngressError`,
`PolicyError`, `QueueError`, `DeliveryError`, ...) and those roots derive from
`MailbusError`, so a caller can tell "mailbus refused or could not do this, and
says why" from a bug (any other exception) with one `except`. An error that
answers a client carries that answer, so nobody composes a reply from it again.
"""

from __future__ import annotations


class MailbusError(Exception):
    """Something mailbus knows how to report; the message is safe to show an operator."""


class CannotStart(MailbusError):
    """A service that cannot start as configured (a listener address it cannot bind):
    the runtime prints the message as one line and exits with EX_CONFIG (78), which
    `mailbus up` does not restart."""
