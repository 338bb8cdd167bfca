"""SMTP AUTH exchanges (PLAIN, RFC 4616; LOGIN): from the wire to a username and password.

Checking them is policy's job; this only speaks the SASL framing of RFC 4954.
"""

from __future__ import annotations

import base64
import binascii
from typing import TYPE_CHECKING

from aiosmtpd.smtp import MISSING

if TYPE_CHECKING:
    from services.ingress.adapters.smtp import IngressSMTP


async def read_credentials(
    server: IngressSMTP, mechanism: str, initial: str | None
) -> tuple[str, str] | None:
    """None when the client was already answered (bad base64, `*` to abort, ...)."""
    if mechanism == "PLAIN":
        blob = await _response(server, initial, "")
        if blob is None:
            return None
        parts = blob.split(b"\x00")
        if len(parts) != 3:
            await server.push("501 5.5.2 Can't split auth value")
            return None
        return _text(parts[1]), _text(parts[2])
    if mechanism == "LOGIN":
        user = await _response(server, initial, "Username:")
        if user is None:
            return None
        password = await _response(server, None, "Password:")
        if password is None:
            return None
        return _text(user), _text(password)
    await server.push("504 5.5.4 Unrecognized authentication type")
    return None


async def _response(server: IngressSMTP, initial: str | None, challenge: str) -> bytes | None:
    if initial is None:
        answer = await server.challenge_auth(challenge)
        return None if answer is MISSING else answer
    if initial == "=":
        return b""  # RFC 4954 section 4: an empty initial response
    try:
        return base64.b64decode(initial, validate=True)
    except (binascii.Error, ValueError):
        await server.push("501 5.5.2 Can't decode base64")
        return None


def _text(value: bytes) -> str:
    # Undecodable bytes simply fail the check; they must not fail the session.
    return value.decode("utf-8", errors="replace")
