"""The SASL framing of SMTP AUTH (RFC 4954) for PLAIN (RFC 4616) and LOGIN: what it says, decoded.

Checking the credentials is policy's job and exchanging the lines the
session's; this says which challenges a mechanism sends, reads an initial
response and takes the username and password out of the decoded responses.
Every failure is a `SaslError` (core/errors.py) carrying the client's reply.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence

from services.ingress.core.errors import AuthorizationRefused, SaslError, UnknownMechanism

# The challenge before each response of a mechanism, in order (the session sends it
# base64-encoded after "334 "); the first is not sent when the client gave an initial
# response with its AUTH command.
CHALLENGES: dict[str, tuple[str, ...]] = {
    "PLAIN": ("",),
    "LOGIN": ("Username:", "Password:"),
}
EMPTY_RESPONSE = "="  # RFC 4954 section 4: an initial response of zero length
UNKNOWN = "Unrecognized authentication type"


def challenges(mechanism: str) -> tuple[str, ...]:
    try:
        return CHALLENGES[mechanism]
    except KeyError:
        raise UnknownMechanism(UNKNOWN) from None


def initial_response(text: str) -> bytes:
    """The initial response of an AUTH command, decoded."""
    if text == EMPTY_RESPONSE:
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:  # binascii.Error, or text that is not ASCII
        raise SaslError("Can't decode base64") from None


def credentials(mechanism: str, responses: Sequence[bytes]) -> tuple[str, str]:
    """(username, password) from the decoded responses, one to each challenge."""
    if mechanism == "PLAIN":
        # authzid NUL authcid NUL passwd. An empty authzid, or the authcid itself, asks
        # for no more than the user's own rights; any other is refused, not ignored.
        parts = responses[0].split(b"\x00")
        if len(parts) != 3:
            raise SaslError("Can't split auth value")
        authzid, authcid, password = parts
        if authzid and authzid != authcid:
            raise AuthorizationRefused("Authorization identity differs from the authenticated one")
        return _text(authcid), _text(password)
    if mechanism == "LOGIN":
        user, password = responses
        return _text(user), _text(password)
    raise UnknownMechanism(UNKNOWN)


def _text(value: bytes) -> str:
    # Undecodable bytes simply fail the check; they must not fail the session.
    return value.decode("utf-8", errors="replace")
