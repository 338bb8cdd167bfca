"""Every kind of report we send, read by a strict RFC 3464/6522 reader and by flufl.bounce.

The kinds: failure (a remote reply, and diagnostics of our own: null MX, no
such domain, connect, TLS and login trouble, time-outs), expiry, delay, success
(to a remote server, and into a local mailbox). The strict reader
(tests/support/strict_dsn.py) raises on any field or syntax RFC 3464 does not
allow; flufl.bounce must find the failed recipients, permanent or temporary.
"""

from __future__ import annotations

import email
from datetime import timedelta

import pytest
from flufl.bounce import all_failures

from libs.common.contract.events import (
    Event,
    MessageDelayed,
    RecipientOutcome,
    RecipientsDelivered,
    RecipientsFailed,
)
from tests.support.strict_dsn import ReportError, read_report
from tests.unit.test_notifier_core import AT, delayed, delivered, expired, failed
from tests.unit.test_notifier_render import report_of

OWN_DIAGNOSTICS = [
    "null MX: remote.test accepts no mail (RFC 7505)",
    "domain remote.test does not exist",
    "connect to mx.remote.test[192.0.2.9]: timed out",
    "TLS handshake with mx.remote.test[192.0.2.9]: certificate verify failed",
    "AUTH PLAIN at relay.test[192.0.2.1]: 535 5.7.8 Authentication failed",
]


def failed_with(diagnostic: str, status: str = "5.1.10", remote_host: str = "") -> Event:
    outcome = RecipientOutcome(
        address="bob@remote.test",
        action="failed",
        status=status,
        remote_host=remote_host,
        diagnostic=diagnostic,
        last_attempt_at=AT,
    )
    return RecipientsFailed(
        event_id="Q1.a1.failed",
        queue_id="Q1",
        occurred_at=AT + timedelta(minutes=1),
        attempt=1,
        outcomes=(outcome,),
    )


def delayed_with(diagnostic: str) -> Event:
    outcome = RecipientOutcome(
        address="bob@remote.test",
        action="delayed",
        status="4.4.1",
        remote_host="mx.remote.test[192.0.2.9]",
        diagnostic=diagnostic,
        last_attempt_at=AT,
    )
    return MessageDelayed(
        event_id="Q1.delayed",
        queue_id="Q1",
        occurred_at=AT + timedelta(hours=4),
        recipients=("bob@remote.test",),
        outcomes=(outcome,),
        will_retry_until=AT + timedelta(days=5),
    )


def into_mailbox() -> Event:
    outcome = RecipientOutcome(
        address="carol@remote.test",
        action="delivered",
        status="2.0.0",
        remote_host="mailbox",
        diagnostic="250 2.0.0 stored",
        last_attempt_at=AT,
    )
    return RecipientsDelivered(
        event_id="Q1.a1.delivered",
        queue_id="Q1",
        occurred_at=AT + timedelta(minutes=1),
        attempt=1,
        outcomes=(outcome,),
    )


KINDS: dict[str, Event] = {
    "failure": failed("bob@remote.test", "carol@remote.test"),
    "expiry": expired("bob@remote.test", "carol@remote.test"),
    "delay": delayed("bob@remote.test", "carol@remote.test"),
    "success": delivered("carol@remote.test"),
    "local success": into_mailbox(),
    **{f"own: {d[:20]}": failed_with(d) for d in OWN_DIAGNOSTICS},
    "delay with our diagnostic": delayed_with("connect to mx.remote.test[192.0.2.9]: refused"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_a_strict_reader_accepts_every_report(kind: str) -> None:
    _, raw = report_of(KINDS[kind])
    report = read_report(raw)
    assert report.per_message["x-mailbus-sender"] == "rfc822; alice@example.test"
    for fields in report.per_recipient:
        assert "original-recipient" in fields
        diagnostic = fields.get("diagnostic-code", "")
        if diagnostic.startswith("smtp;"):
            assert diagnostic.split(";", 1)[1].strip()[:3].isdigit()


@pytest.mark.parametrize("diagnostic", OWN_DIAGNOSTICS)
def test_our_own_diagnostics_are_no_smtp_replies(diagnostic: str) -> None:
    _, raw = report_of(failed_with(diagnostic))
    (fields,) = read_report(raw).per_recipient
    assert fields["diagnostic-code"] == f"X-Mailbus; {diagnostic}"
    assert "remote-mta" not in fields  # no remote server answered


def test_a_remote_reply_is_smtp() -> None:
    _, raw = report_of(failed_with("550 5.1.1 No such user", "5.1.1", "mx.remote.test[192.0.2.9]"))
    (fields,) = read_report(raw).per_recipient
    assert fields["diagnostic-code"] == "smtp; 550 5.1.1 No such user"
    assert fields["remote-mta"] == "dns; mx.remote.test"


def test_local_delivery_names_no_remote_mta() -> None:
    _, raw = report_of(into_mailbox())
    (fields,) = read_report(raw).per_recipient
    assert "remote-mta" not in fields


@pytest.mark.parametrize(
    ("old", "new", "broken"),
    [
        (b"X-Mailbus; null MX", b"smtp; null MX", "smtp diagnostic"),
        (b"Reporting-MTA: dns; mx.example.test", b"Reporting-MTA: dns; mailbox", "Reporting-MTA"),
        (b"Action: failed", b"Action: bounced", "Action"),
        (b"Status: 5.1.10", b"Status: 2.1.10", "Status"),
        (b"Arrival-Date:", b"Arrived-At:", "per-message"),
    ],
)
def test_the_strict_reader_refuses_what_rfc_3464_does_not_allow(
    old: bytes, new: bytes, broken: str
) -> None:
    _, raw = report_of(failed_with(OWN_DIAGNOSTICS[0]))
    assert old in raw
    with pytest.raises(ReportError, match=broken):
        read_report(raw.replace(old, new))


@pytest.mark.parametrize("kind", KINDS)
def test_flufl_bounce_reads_every_report(kind: str) -> None:
    event = KINDS[kind]
    _, raw = report_of(event)
    temporary, permanent = all_failures(email.message_from_bytes(raw))
    report = read_report(raw)
    actions = {f["action"] for f in report.per_recipient}
    if actions == {"failed"}:
        assert permanent and not temporary
    elif actions == {"delayed"}:
        assert temporary and not permanent
    else:
        assert (temporary, permanent) == (frozenset(), frozenset())
