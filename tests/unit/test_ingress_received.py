"""The Received header ingress prepends (RFC 5321 4.4, RFC 3848), and the loop counter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from services.ingress.core.received import (
    address_literal,
    count_received,
    received_header,
    with_protocol,
)

NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)


@pytest.mark.parametrize(
    ("extended", "tls", "authenticated", "utf8", "expected"),
    [
        (False, False, False, False, "SMTP"),
        (False, True, True, False, "SMTP"),  # HELO has no TLS or AUTH variants
        (True, False, False, False, "ESMTP"),
        (True, True, False, False, "ESMTPS"),
        (True, False, True, False, "ESMTPA"),
        (True, True, True, False, "ESMTPSA"),
        (True, False, False, True, "UTF8SMTP"),
        (True, True, True, True, "UTF8SMTPSA"),
    ],
)
def test_with_protocol(
    extended: bool, tls: bool, authenticated: bool, utf8: bool, expected: str
) -> None:
    assert (
        with_protocol(extended=extended, tls=tls, authenticated=authenticated, utf8=utf8)
        == expected
    )


@pytest.mark.parametrize(
    ("ip", "literal"),
    [
        ("192.0.2.1", "[192.0.2.1]"),
        ("2001:db8:0:0::1", "[IPv6:2001:db8::1]"),
        ("::ffff:192.0.2.7", "[192.0.2.7]"),
        ("not-an-ip", "[not-an-ip]"),
    ],
)
def test_address_literal(ip: str, literal: str) -> None:
    assert address_literal(ip) == literal


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        (
            {"recipients": ["bob@example.test"]},
            b"Received: from client.remote.test (192.0.2.1 [192.0.2.1])\r\n"
            b"\tby mx.example.test (mailbus) with ESMTPS id 01ABC\r\n"
            b"\tfor <bob@example.test>; Tue, 04 Mar 2025 05:06:07 +0000\r\n",
        ),
        (
            {"recipients": ["a@example.test", "b@example.test"]},
            b"Received: from client.remote.test (192.0.2.1 [192.0.2.1])\r\n"
            b"\tby mx.example.test (mailbus) with ESMTPS id 01ABC;\r\n"
            b"\tTue, 04 Mar 2025 05:06:07 +0000\r\n",
        ),
        (
            {
                "recipients": ["bob@example.test"],
                "client_name": "mail.remote.test",
                "client_ip": "2001:db8::25",
                "now": NOW.astimezone(timezone(timedelta(hours=1))),
            },
            b"Received: from client.remote.test (mail.remote.test [IPv6:2001:db8::25])\r\n"
            b"\tby mx.example.test (mailbus) with ESMTPS id 01ABC\r\n"
            b"\tfor <bob@example.test>; Tue, 04 Mar 2025 06:06:07 +0100\r\n",
        ),
        (
            {"recipients": ["bob@example.test"], "helo": "evil\r\nX-Injected: yes"},
            b"Received: from evil??X-Injected: yes (192.0.2.1 [192.0.2.1])\r\n"
            b"\tby mx.example.test (mailbus) with ESMTPS id 01ABC\r\n"
            b"\tfor <bob@example.test>; Tue, 04 Mar 2025 05:06:07 +0000\r\n",
        ),
        (
            {"recipients": ["bob@example.test"], "helo": ""},
            b"Received: from unknown (192.0.2.1 [192.0.2.1])\r\n"
            b"\tby mx.example.test (mailbus) with ESMTPS id 01ABC\r\n"
            b"\tfor <bob@example.test>; Tue, 04 Mar 2025 05:06:07 +0000\r\n",
        ),
    ],
    ids=["one-recipient", "several-recipients", "ipv6-and-name", "helo-injection", "no-helo"],
)
def test_received_header(kwargs: dict[str, object], expected: bytes) -> None:
    args: dict[str, object] = {
        "helo": "client.remote.test",
        "client_ip": "192.0.2.1",
        "hostname": "mx.example.test",
        "protocol": "ESMTPS",
        "queue_id": "01ABC",
        "now": NOW,
    }
    args.update(kwargs)
    assert received_header(**args) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("message", "count"),
    [
        (b"Subject: x\r\n\r\nbody\r\n", 0),
        (b"Received: a\r\nReceived: b\r\n\tcontinued\r\nSubject: x\r\n\r\n", 2),
        (b"RECEIVED: a\nreceived:b\n\n", 2),  # bare LF and any case
        (b"Subject: x\r\n\r\nReceived: in the body\r\n", 0),
        (b"X-Received: a\r\n Received: folded\r\n\r\n", 0),
        (b"", 0),
    ],
)
def test_count_received(message: bytes, count: int) -> None:
    assert count_received(message) == count


def test_hidden_client_leaves_out_the_from_clause() -> None:
    from datetime import UTC, datetime

    header = received_header(
        helo="laptop.corp.internal",
        client_ip="10.1.2.3",
        hostname="mx.example.test",
        protocol="ESMTPSA",
        queue_id="Q1",
        recipients=["bob@remote.test"],
        now=datetime(2025, 1, 1, tzinfo=UTC),
        client_name="laptop.corp.internal",
        hide_client=True,
    )
    assert header == (
        b"Received: by mx.example.test (mailbus) with ESMTPSA id Q1\r\n"
        b"\tfor <bob@remote.test>; Wed, 01 Jan 2025 00:00:00 +0000\r\n"
    )


def test_tls_is_recorded_as_postfix_does() -> None:
    from datetime import UTC, datetime

    header = received_header(
        helo="client.test",
        client_ip="192.0.2.1",
        hostname="mx.example.test",
        protocol="ESMTPS",
        queue_id="01ABC",
        recipients=["bob@example.test"],
        now=datetime(2026, 3, 2, 10, 0, tzinfo=UTC),
        tls=("TLSv1.3", "TLS_AES_256_GCM_SHA384"),
    )
    assert header.split(b"\r\n")[:3] == [
        b"Received: from client.test (192.0.2.1 [192.0.2.1])",
        b"\t(using TLSv1.3 with cipher TLS_AES_256_GCM_SHA384)",
        b"\tby mx.example.test (mailbus) with ESMTPS id 01ABC",
    ]
