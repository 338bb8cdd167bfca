"""Delivery's errors: one root, grouped by meaning, each deferring with its RFC 3463 status.

The statuses end up in DeliveryDeferred events and in reports, so they are pinned here.
"""

from __future__ import annotations

import pytest

from libs.common.contract.errors import MailbusError
from services.delivery.core import Reply
from services.delivery.core.errors import (
    ConnectFailedError,
    ConnectionLostError,
    DeliveryError,
    LoginRefusedError,
    NetworkError,
    NotAcceptingError,
    ProtocolError,
    SecurityError,
    TlsFailedError,
    TlsUnavailableError,
)
from services.delivery.core.plan import retry_in_plain_text


@pytest.mark.parametrize(
    ("kind", "group", "status"),
    [
        (ConnectFailedError, NetworkError, "4.4.1"),
        (ConnectionLostError, NetworkError, "4.4.2"),
        (NotAcceptingError, DeliveryError, "4.3.2"),
        (ProtocolError, DeliveryError, "4.5.0"),
        (TlsFailedError, SecurityError, "4.7.5"),
        (TlsUnavailableError, SecurityError, "4.7.10"),
        (LoginRefusedError, SecurityError, "4.7.0"),
    ],
)
def test_each_kind_defers_with_its_status(
    kind: type[DeliveryError], group: type[DeliveryError], status: str
) -> None:
    error = kind("mx.remote.test: what happened")
    assert isinstance(error, group) and isinstance(error, DeliveryError)
    assert isinstance(error, MailbusError)  # what mailbus raises on purpose, not a bug
    assert error.reply == Reply(0, "mx.remote.test: what happened", status)
    assert error.reply.outcome == "deferred"
    assert str(error) == "mx.remote.test: what happened"


def test_only_a_failed_handshake_is_retried_in_plain_text() -> None:
    assert retry_in_plain_text("opportunistic", TlsFailedError("handshake").reply)
    assert not retry_in_plain_text("required", TlsFailedError("handshake").reply)
    assert not retry_in_plain_text("opportunistic", TlsUnavailableError("no STARTTLS").reply)
    assert not retry_in_plain_text("opportunistic", ConnectionLostError("lost").reply)
