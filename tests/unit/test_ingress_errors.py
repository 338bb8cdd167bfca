"""Ingress's errors: one root, each carrying the SMTP reply it answers with."""

from __future__ import annotations

from services.ingress.core.errors import (
    DsnSyntaxError,
    IngressError,
    SaslError,
    UnknownMechanism,
)


def test_each_error_carries_its_reply() -> None:
    errors = [
        DsnSyntaxError("RET must be FULL or HDRS"),
        SaslError("Can't decode base64"),
        UnknownMechanism("Unrecognized authentication type"),
        IngressError("Internal error, try again later"),
    ]
    assert [error.reply for error in errors] == [
        "501 5.5.4 RET must be FULL or HDRS",
        "501 5.5.2 Can't decode base64",
        "504 5.5.4 Unrecognized authentication type",
        "451 4.3.0 Internal error, try again later",
    ]
    # The text alone, as the DSN tests match it.
    assert str(errors[0]) == "RET must be FULL or HDRS"
