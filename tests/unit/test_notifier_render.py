"""Rendered reports: RFC 3464 / RFC 6522 structure, localized text, and a third-party parser."""

from __future__ import annotations

import email
from collections.abc import Mapping
from datetime import timedelta
from email import policy
from email.message import EmailMessage, Message

import pytest
from flufl.bounce import all_failures

from libs.common.contract.events import Event, MessageReceived, Recipient
from libs.common.mail import languages
from services.notifier.adapters.catalogs import load_catalogs
from services.notifier.core import (
    ReportInput,
    ReportPlan,
    Translator,
    attachment,
    decide,
    read_headers,
    render,
    trigger_of,
)
from services.notifier.core.render import DEFAULT_FULL_LIMIT, FULL_LIMIT
from tests.unit.test_notifier_core import (
    AT,
    POSTMASTER,
    delayed,
    delivered,
    expired,
    failed,
    received,
)

ORIGINAL = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: bob@remote.test, carol@remote.test\r\n"
    b"Subject: Quarterly figures\r\n"
    b"Date: Sat, 28 Nov 2026 04:29:00 +0100\r\n"
    b"Message-ID: <m1@example.test>\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Hello Bob, the figures are attached. \xc3\x89t\xc3\xa9 2026.\r\n"
)
HOST = "mx.example.test"
CATALOGS: Mapping[str, Translator] = load_catalogs()
BOB = Recipient(address="bob@remote.test", orcpt="rfc822;Bob@Remote.test")
CAROL = Recipient(address="carol@remote.test", notify=("SUCCESS", "FAILURE", "DELAY"))


def message(**changes: object) -> MessageReceived:
    base = received(BOB, CAROL).model_copy(update={"envid": "ENV-42", "size": len(ORIGINAL)})
    return base.model_copy(update=changes)


def report_of(
    event: Event,
    original: bytes | None = ORIGINAL,
    msg: MessageReceived | None = None,
    language: str = "en",
) -> tuple[ReportPlan, bytes]:
    trigger = trigger_of(event)  # type: ignore[arg-type]
    assert trigger is not None
    msg = msg or message()
    headers = read_headers(original) if original is not None else None
    plan = decide(trigger, msg, headers, POSTMASTER, language)
    assert isinstance(plan, ReportPlan), plan
    inp = ReportInput(plan, trigger, msg, original, HOST, "R1", trigger.occurred_at)
    return plan, render(inp, CATALOGS[plan.language])


def parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def text_of(report: EmailMessage) -> str:
    """The human-readable part with its lines joined: wrapping is not the point."""
    content = next(iter(report.iter_parts())).get_content()
    return " ".join(content.split())


def status_blocks(report: EmailMessage) -> list[Message]:
    part = list(report.iter_parts())[1]
    blocks = part.get_payload()
    assert isinstance(blocks, list)
    return [b for b in blocks if isinstance(b, Message)]


KINDS = {
    "failure": (failed("bob@remote.test", "carol@remote.test"), "failed", "message/rfc822"),
    "expiry": (expired("bob@remote.test", "carol@remote.test"), "failed", "message/rfc822"),
    "delay": (delayed("bob@remote.test", "carol@remote.test"), "delayed", "text/rfc822-headers"),
    "success": (delivered("carol@remote.test"), "delivered", "text/rfc822-headers"),
}


@pytest.mark.parametrize("kind", KINDS)
def test_report_structure(kind: str) -> None:
    event, action, third = KINDS[kind]
    plan, raw = report_of(event)
    report = parse(raw)
    assert raw.count(b"\r\n") == raw.count(b"\n"), "lines end in CRLF"
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    assert report["From"] == "Mail Delivery System <MAILER-DAEMON@mx.example.test>"
    assert report["To"] == "alice@example.test"
    assert report["Auto-Submitted"] == "auto-replied"
    assert report["MIME-Version"] == "1.0"
    assert report["Message-ID"] == "<R1@mx.example.test>"
    assert report["In-Reply-To"] == "<m1@example.test>"
    assert report["Date"] is not None
    assert report["Subject"].endswith(": Quarterly figures")
    parts = list(report.iter_parts())
    assert [p.get_content_type() for p in parts] == [
        "text/plain",
        "message/delivery-status",
        third,
    ]
    assert parts[0]["Content-Language"] == "en"
    text = text_of(report)
    for rcpt in plan.recipients:
        assert rcpt.outcome.address in text

    per_message, *per_recipient = status_blocks(report)
    assert per_message["Reporting-MTA"] == "dns; mx.example.test"
    assert per_message["Original-Envelope-Id"] == "ENV-42"
    assert per_message["Arrival-Date"] == "Sat, 28 Nov 2026 03:30:00 +0000"
    assert [b["Final-Recipient"] for b in per_recipient] == [
        f"rfc822; {r.outcome.address}" for r in plan.recipients
    ]
    for block, rcpt in zip(per_recipient, plan.recipients, strict=True):
        assert block["Action"] == action
        assert block["Status"] == rcpt.outcome.status
        assert (block["Will-Retry-Until"] is not None) == (kind == "delay")
        if rcpt.outcome.address == "bob@remote.test":
            assert block["Original-Recipient"] == "rfc822; Bob@Remote.test"
        else:  # no ORCPT given: the address as it came
            assert block["Original-Recipient"] == f"rfc822; {rcpt.outcome.address}"
    assert per_message["X-Mailbus-Sender"] == "rfc822; alice@example.test"
    if kind in ("failure", "delay"):
        assert per_recipient[0]["Remote-MTA"] == "dns; mx.remote.test"
        assert per_recipient[0]["Last-Attempt-Date"] is not None
    if kind == "failure":
        assert per_recipient[0]["Diagnostic-Code"] == "smtp; 550 5.1.1 No such user"
        assert "550 5.1.1 No such user" in text


def test_full_original_is_attached_byte_for_byte() -> None:
    _, raw = report_of(failed("bob@remote.test"))
    assert ORIGINAL in raw
    attached = list(parse(raw).iter_parts())[2]
    payload = attached.get_payload()
    assert isinstance(payload, list) and isinstance(payload[0], Message)
    inner = payload[0]
    assert inner["Message-ID"] == "<m1@example.test>"


def test_headers_only_part_holds_the_header_section() -> None:
    _, raw = report_of(delayed("bob@remote.test"))
    part = list(parse(raw).iter_parts())[2]
    assert part.get_content_type() == "text/rfc822-headers"
    assert b"Subject: Quarterly figures" in raw
    assert b"Hello Bob" not in raw


@pytest.mark.parametrize(
    ("kind", "ret", "size", "mode"),
    [
        ("failure", None, 1000, "full"),
        ("failure", None, DEFAULT_FULL_LIMIT + 1, "headers"),
        ("failure", "FULL", DEFAULT_FULL_LIMIT + 1, "full"),
        ("failure", "FULL", FULL_LIMIT + 1, "headers"),
        ("failure", "HDRS", 1000, "headers"),
        ("expiry", None, 1000, "full"),
        ("delay", "FULL", 1000, "headers"),
        ("success", "FULL", 1000, "headers"),
    ],
)
def test_what_is_attached(kind: str, ret: str | None, size: int, mode: str) -> None:
    plan = ReportPlan(kind=kind, to="a@b", recipients=(), language="en")  # type: ignore[arg-type]
    assert attachment(plan, message(ret=ret), b"x" * size) == mode
    assert attachment(plan, message(ret=ret), None) == "none"


def test_missing_body_gives_a_report_without_the_original() -> None:
    _, raw = report_of(failed("bob@remote.test"), original=None)
    report = parse(raw)
    assert [p.get_content_type() for p in report.iter_parts()] == [
        "text/plain",
        "message/delivery-status",
    ]
    assert report["Subject"] == "Undelivered mail"
    assert "no longer available" in text_of(report)


def test_flufl_bounce_finds_the_failed_recipients_as_permanent() -> None:
    _, raw = report_of(failed("bob@remote.test", "carol@remote.test"))
    temporary, permanent = all_failures(email.message_from_bytes(raw))
    # flufl reads Original-Recipient first, as RFC 3464 intends.
    assert permanent == {b"Bob@Remote.test", b"carol@remote.test"}
    assert not temporary


def test_flufl_bounce_finds_expired_recipients_as_permanent() -> None:
    _, raw = report_of(expired("carol@remote.test"))
    temporary, permanent = all_failures(email.message_from_bytes(raw))
    assert (temporary, permanent) == (frozenset(), frozenset({b"carol@remote.test"}))


def test_flufl_bounce_finds_the_delayed_recipients_as_temporary() -> None:
    _, raw = report_of(delayed("bob@remote.test", "carol@remote.test"))
    temporary, permanent = all_failures(email.message_from_bytes(raw))
    assert temporary == {b"Bob@Remote.test", b"carol@remote.test"}
    assert not permanent


def test_flufl_bounce_finds_nothing_in_a_success_report() -> None:
    _, raw = report_of(delivered("carol@remote.test"))
    assert all_failures(email.message_from_bytes(raw)) == (frozenset(), frozenset())


TITLES = {
    "failure": "Undelivered mail",
    "expiry": "Undelivered mail (time limit reached)",
    "delay": "Delayed mail (still trying)",
    "success": "Message delivered",
}


@pytest.mark.parametrize("lang", languages.AVAILABLE)
@pytest.mark.parametrize("kind", KINDS)
def test_each_language_has_its_subject_and_text(lang: str, kind: str) -> None:
    event = KINDS[kind][0]
    plan, raw = report_of(event, language=lang)
    assert plan.language == lang
    report = parse(raw)
    title = CATALOGS[lang].gettext(TITLES[kind])
    assert report["Subject"] == f"{title}: Quarterly figures"
    if lang != "en":
        assert title != TITLES[kind]
    text_part = next(iter(report.iter_parts()))
    assert text_part["Content-Language"] == lang
    text = text_part.get_content()
    label = CATALOGS[lang].gettext("Recipient:")
    assert text.count(label) == len(plan.recipients)
    # The machine-readable part stays ASCII whatever the language.
    assert list(report.iter_parts())[1].as_bytes().isascii()


def test_language_follows_the_original_content_language() -> None:
    original = ORIGINAL.replace(b"Subject:", b"Content-Language: de\r\nSubject:")
    plan, raw = report_of(failed("bob@remote.test"), original=original, language="fr")
    assert plan.language == "de"
    assert parse(raw)["Subject"] == "Nicht zugestellte Nachricht: Quarterly figures"


def test_delay_text_says_how_long_mailbus_keeps_trying() -> None:
    _, raw = report_of(delayed("bob@remote.test"))
    text = text_of(parse(raw))
    assert "keep trying until" in text and "December 3, 2026" in text
    assert "5 days from now" in text


def test_report_of_a_report_goes_to_postmaster() -> None:
    report_msg = received(Recipient(address="alice@example.test"), mail_from="", report_of="Q0")
    _, raw = report_of(failed("alice@example.test"), msg=report_msg)
    report = parse(raw)
    assert report["To"] == POSTMASTER
    text = text_of(report)
    assert "sent to alice@example.test could not be delivered" in text


def test_rendering_is_deterministic() -> None:
    assert report_of(failed("bob@remote.test"))[1] == report_of(failed("bob@remote.test"))[1]


def test_non_ascii_recipient_makes_a_global_delivery_status() -> None:
    msg = received(Recipient(address="jose@ejemplo.test"), Recipient(address="josé@ejemplo.test"))
    _, raw = report_of(failed("josé@ejemplo.test"), msg=msg)
    report = email.message_from_bytes(raw, policy=policy.SMTPUTF8)
    assert isinstance(report, EmailMessage)
    status = list(report.iter_parts())[1]
    assert status.get_content_type() == "message/global-delivery-status"
    assert "Final-Recipient: utf-8; josé@ejemplo.test\r\nAction: failed" in raw.decode()
    assert "Final-Recipient: rfc822;" not in raw.decode()


def test_subject_is_encoded_when_not_ascii() -> None:
    original = ORIGINAL.replace(b"Quarterly figures", b"=?utf-8?q?Quartalsbericht_f=C3=BCr_Q3?=")
    _, raw = report_of(failed("bob@remote.test"), original=original, language="de")
    subject_line = raw.split(b"\r\n\r\n", 1)[0]
    assert subject_line.isascii()
    assert parse(raw)["Subject"] == "Nicht zugestellte Nachricht: Quartalsbericht für Q3"


def test_dates_in_the_text_use_the_senders_offset() -> None:
    _, raw = report_of(failed("bob@remote.test"), language="de")
    text = text_of(parse(raw))
    assert "28. November 2026, 04:30:00 +0100" in text


def test_expiry_text_names_the_time_limit() -> None:
    _, raw = report_of(expired("bob@remote.test"))
    text = text_of(parse(raw))
    assert "before the time limit (5 days) ran out" in text
    assert AT + timedelta(days=5) > AT  # the event's time is the "now" of the text
