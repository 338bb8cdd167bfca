"""Every 2xx/4xx/5xx reply of ingress carries an RFC 3463 enhanced status code."""

from __future__ import annotations

import pytest

from services.ingress.core.replies import accepted, closing_reply, enhance


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        ("250 OK", "250 2.0.0 OK"),
        ("221 Bye", "221 2.0.0 Bye"),
        ("503 Error: need MAIL command", "503 5.5.1 Error: need MAIL command"),
        ("500 Error: bad syntax", "500 5.5.2 Error: bad syntax"),
        ("501 Syntax: MAIL FROM: <address>", "501 5.5.4 Syntax: MAIL FROM: <address>"),
        (
            "530 Must issue a STARTTLS command first",
            "530 5.7.0 Must issue a STARTTLS command first",
        ),
        ("552 Error: Too much mail data", "552 5.3.4 Error: Too much mail data"),
        ("220 Ready to start TLS", "220 2.0.0 Ready to start TLS"),
        ("599 odd", "599 5.0.0 odd"),
        ("250", "250 2.0.0"),
        # Already enhanced, intermediate, or not a reply at all: untouched.
        ("554 5.7.1 Relay access denied", "554 5.7.1 Relay access denied"),
        ("421 4.7.0 MAIL sent too many times", "421 4.7.0 MAIL sent too many times"),
        ("354 End data with <CR><LF>.<CR><LF>", "354 End data with <CR><LF>.<CR><LF>"),
        ("334 ", "334 "),
        ("hello", "hello"),
        # A number that merely looks like a status is not one without the class digit.
        ("250 1.2.3 text", "250 2.0.0 1.2.3 text"),
    ],
)
def test_enhance(reply: str, expected: str) -> None:
    assert enhance(reply) == expected


@pytest.mark.parametrize(
    ("code", "status", "message", "expected"),
    [
        (451, "4.3.0", "Policy service unavailable", "421 4.3.0 Policy service unavailable"),
        (421, "4.7.0", "Too many connections", "421 4.7.0 Too many connections"),
        (554, "5.7.1", "Go away", "554 5.7.1 Go away"),
    ],
)
def test_closing_reply_is_421_when_temporary(
    code: int, status: str, message: str, expected: str
) -> None:
    assert closing_reply(code, status, message) == expected


def test_accepted() -> None:
    assert accepted("01ABC") == "250 2.0.0 Ok: queued as 01ABC"
