"""Why a conversation with the next hop stopped early: one family of errors.

The SMTP, LMTP and POP3 clients raise these inside a conversation and catch them
at its edge, where `reply` becomes the answer for every recipient not yet
answered. A stand-in reply has code 0, so it defers (`Reply.outcome`): nothing
that goes wrong on our side of a conversation bounces a recipient. Each kind
carries the RFC 3463 status it stands for, so a raise names what went wrong and
this module says which status that is.
"""

from __future__ import annotations

from typing import ClassVar

from libs.common.contract.errors import MailbusError
from services.delivery.core.replies import (
    AUTH_FAILED,
    CONNECT_FAILED,
    CONNECTION_LOST,
    ENCRYPTION_NEEDED,
    PROTOCOL_ERROR,
    TLS_FAILED,
    Reply,
)


class DeliveryError(MailbusError):
    """Delivery's root: catch this at the edge of a conversation."""

    status: ClassVar[str] = PROTOCOL_ERROR

    def __init__(self, text: str) -> None:
        super().__init__(text)
        self.reply = Reply(0, text, self.status)


# --- the network (RFC 3463 X.4.x) ------------------------------------------------------


class NetworkError(DeliveryError):
    """The next hop could not be reached, or the connection to it broke."""


class ConnectFailedError(NetworkError):
    """The host could not be talked to: the connection was refused or timed out, or an
    LMTP or POP3 server did not greet us. POP3-before-SMTP reports any break of its
    short exchange so."""

    status = CONNECT_FAILED  # 4.4.1 no answer from host


class ConnectionLostError(NetworkError):
    """The connection broke in the middle of the conversation."""

    status = CONNECTION_LOST  # 4.4.2 bad connection


# --- the next hop's answers ------------------------------------------------------------


class NotAcceptingError(DeliveryError):
    """An SMTP server greeted us with a refusal; it may take mail later, as Postfix assumes."""

    status = "4.3.2"  # system not accepting network messages


class ProtocolError(DeliveryError):
    """An answer we cannot follow, or a refused set-up command (HELO, LHLO, STARTTLS):
    never the sender's fault, so never a reason to bounce."""

    status = PROTOCOL_ERROR  # 4.5.0


# --- security: TLS and our own login (RFC 3463 X.7.x) ----------------------------------


class SecurityError(DeliveryError):
    """Encryption or our login at the relay host stood in the way."""


class TlsFailedError(SecurityError):
    """The TLS handshake failed (opportunistic TLS retries once in plain text)."""

    status = TLS_FAILED  # 4.7.5 cryptographic failure


class TlsUnavailableError(SecurityError):
    """`delivery.tls: required`, and the server does not offer STARTTLS (or POP3 STLS)."""

    status = ENCRYPTION_NEEDED  # 4.7.10


class PlaintextLoginError(SecurityError):
    """The relay host wants a password and the connection is not encrypted: it is not
    sent (delivery.relay_host.auth.allow_plaintext is false), and the mail waits."""

    status = ENCRYPTION_NEEDED  # 4.7.10


class LoginRefusedError(SecurityError):
    """Our login at the relay host (SMTP AUTH, POP3-before-SMTP) was refused: an
    operator's fix, so the mail waits, and no other address of the relay is tried."""

    status = AUTH_FAILED  # 4.7.0
