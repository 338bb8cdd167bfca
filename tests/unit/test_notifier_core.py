"""The notifier's decisions: triggers, who gets a report, NOTIFY, languages, ids."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

import pytest

from libs.common.config import ConfigError, load_config_text
from libs.common.contract.events import (
    AnyEvent,
    Client,
    DeliverySucceeded,
    MessageDelayed,
    MessageExpired,
    MessageReceived,
    Recipient,
    RecipientOutcome,
    RecipientsDelivered,
    RecipientsFailed,
)
from libs.common.contract.ids import _ALPHABET, derived_queue_id
from libs.common.mail import languages
from services.notifier.core import (
    NoReport,
    OriginalHeaders,
    ReportPlan,
    choose_language,
    decide,
    read_headers,
    trigger_of,
)
from services.notifier.core.dsn import remote_mta, typed_address
from services.notifier.core.explain import categorize

AT = datetime(2026, 11, 28, 3, 30, tzinfo=UTC)
POSTMASTER = "postmaster@mx.example.test"


def received(
    *recipients: Recipient,
    mail_from: str = "alice@example.test",
    report_of: str | None = None,
) -> MessageReceived:
    return MessageReceived(
        event_id="Q1.received",
        queue_id="Q1",
        occurred_at=AT,
        mail_from=mail_from,
        recipients=recipients or (Recipient(address="bob@remote.test"),),
        size=100,
        client=Client(ip="192.0.2.1"),
        report_of=report_of,
    )


def failed(*addresses: str, status: str = "5.1.1") -> RecipientsFailed:
    return RecipientsFailed(
        event_id="Q1.a1.failed",
        queue_id="Q1",
        occurred_at=AT + timedelta(minutes=1),
        attempt=1,
        outcomes=tuple(
            RecipientOutcome(
                address=a,
                action="failed",
                status=status,
                remote_host="mx.remote.test",
                diagnostic=f"550 {status} No such user",
                last_attempt_at=AT,
            )
            for a in addresses or ("bob@remote.test",)
        ),
    )


def delayed(*addresses: str) -> MessageDelayed:
    return MessageDelayed(
        event_id="Q1.delayed",
        queue_id="Q1",
        occurred_at=AT + timedelta(hours=4),
        recipients=addresses,
        outcomes=tuple(
            RecipientOutcome(
                address=a,
                action="delayed",
                status="4.4.1",
                remote_host="mx.remote.test",
                last_attempt_at=AT + timedelta(hours=3),
            )
            for a in addresses
        ),
        will_retry_until=AT + timedelta(days=5),
    )


def delivered(
    *addresses: str, action: Literal["delivered", "relayed"] = "delivered"
) -> RecipientsDelivered:
    return RecipientsDelivered(
        event_id="Q1.a1.delivered",
        queue_id="Q1",
        occurred_at=AT + timedelta(minutes=1),
        attempt=1,
        outcomes=tuple(
            RecipientOutcome(address=a, action=action, status="2.0.0", last_attempt_at=AT)
            for a in addresses
        ),
    )


def expired(*addresses: str) -> MessageExpired:
    return MessageExpired(
        event_id="Q1.expired",
        queue_id="Q1",
        occurred_at=AT + timedelta(days=5),
        recipients=addresses,
    )


# --- triggers -------------------------------------------------------------------------


def test_trigger_kinds() -> None:
    assert trigger_of(failed()).kind == "failure"  # type: ignore[union-attr]
    assert trigger_of(delayed("bob@remote.test")).kind == "delay"  # type: ignore[union-attr]
    assert trigger_of(delivered("bob@remote.test")).kind == "success"  # type: ignore[union-attr]
    assert trigger_of(expired("bob@remote.test")).kind == "expiry"  # type: ignore[union-attr]
    other = DeliverySucceeded(event_id="x", queue_id="Q1", job_id="j", attempt=1, recipient="b@c")
    assert trigger_of(other) is None


def test_expiry_without_outcomes_reports_4_4_7() -> None:
    trigger = trigger_of(expired("bob@remote.test", "carol@remote.test"))
    assert trigger is not None
    assert [(o.address, o.action, o.status) for o in trigger.outcomes] == [
        ("bob@remote.test", "failed", "4.4.7"),
        ("carol@remote.test", "failed", "4.4.7"),
    ]


def test_delay_keeps_will_retry_until() -> None:
    trigger = trigger_of(delayed("bob@remote.test"))
    assert trigger is not None and trigger.will_retry_until == AT + timedelta(days=5)


# --- decide ---------------------------------------------------------------------------


def _decide(
    event: AnyEvent,
    message: MessageReceived,
    headers: OriginalHeaders | None = None,
    language: str = "en",
) -> ReportPlan | NoReport:
    trigger = trigger_of(event)
    assert trigger is not None
    return decide(trigger, message, headers, POSTMASTER, language)


@pytest.mark.parametrize(
    ("notify", "event", "reported"),
    [
        ((), failed("bob@remote.test"), True),
        ((), delayed("bob@remote.test"), True),  # our choice: DELAY by default
        ((), delivered("bob@remote.test"), False),
        ((), expired("bob@remote.test"), True),
        (("NEVER",), failed("bob@remote.test"), False),
        (("NEVER",), delayed("bob@remote.test"), False),
        (("NEVER",), expired("bob@remote.test"), False),
        (("SUCCESS",), failed("bob@remote.test"), False),
        (("SUCCESS",), delivered("bob@remote.test"), True),
        (("SUCCESS",), delayed("bob@remote.test"), False),
        (("FAILURE",), failed("bob@remote.test"), True),
        (("FAILURE",), expired("bob@remote.test"), True),
        (("FAILURE",), delayed("bob@remote.test"), False),
        (("DELAY",), delayed("bob@remote.test"), True),
        (("DELAY",), failed("bob@remote.test"), False),
        (("success", "failure", "delay"), delivered("bob@remote.test"), True),
        (("SUCCESS", "FAILURE", "DELAY"), failed("bob@remote.test"), True),
    ],
)
def test_notify(notify: tuple[str, ...], event: AnyEvent, reported: bool) -> None:
    plan = _decide(event, received(Recipient(address="bob@remote.test", notify=notify)))
    assert isinstance(plan, ReportPlan) is reported


def test_one_report_names_only_recipients_that_asked() -> None:
    message = received(
        Recipient(address="bob@remote.test", orcpt="rfc822;Bob@Remote.test"),
        Recipient(address="carol@remote.test", notify=("NEVER",)),
        Recipient(address="dave@remote.test", notify=("FAILURE",)),
    )
    plan = _decide(failed("bob@remote.test", "carol@remote.test", "dave@remote.test"), message)
    assert isinstance(plan, ReportPlan)
    assert plan.to == "alice@example.test" and plan.kind == "failure" and not plan.about_report
    assert [r.outcome.address for r in plan.recipients] == ["bob@remote.test", "dave@remote.test"]
    assert plan.recipients[0].orcpt == "rfc822;Bob@Remote.test"


def test_null_sender_gets_no_report() -> None:
    plan = _decide(failed(), received(mail_from=""))
    assert plan == NoReport("null sender")


@pytest.mark.parametrize(
    ("headers", "reported"),
    [
        (OriginalHeaders(content_type="multipart/report"), False),
        (OriginalHeaders(auto_submitted="auto-replied"), False),
        (OriginalHeaders(auto_submitted="auto-replied; owner-email=x@y"), False),
        # Lists and alerts are auto-generated and their owners need the bounces.
        (OriginalHeaders(auto_submitted="auto-generated"), True),
        (OriginalHeaders(auto_submitted="no"), True),
    ],
)
def test_reports_and_auto_replies_get_no_report(headers: OriginalHeaders, reported: bool) -> None:
    assert isinstance(_decide(failed(), received(), headers), ReportPlan) is reported


def test_failed_report_goes_to_postmaster_once() -> None:
    report = received(Recipient(address="alice@example.test"), mail_from="", report_of="Q0")
    plan = _decide(failed("alice@example.test"), report, language="de")
    assert isinstance(plan, ReportPlan)
    assert plan.to == POSTMASTER and plan.about_report and plan.language == "de"
    # ...and the report to the postmaster that fails in turn is dropped.
    to_postmaster = received(
        Recipient(address="Postmaster@MX.example.test"), mail_from="", report_of="Q2"
    )
    assert isinstance(_decide(failed("Postmaster@MX.example.test"), to_postmaster), NoReport)
    assert isinstance(_decide(expired("Postmaster@MX.example.test"), to_postmaster), NoReport)


def test_reports_get_no_delay_or_success_report() -> None:
    report = received(
        Recipient(address="alice@example.test", notify=("SUCCESS",)), mail_from="", report_of="Q0"
    )
    assert isinstance(_decide(delayed("alice@example.test"), report), NoReport)
    assert isinstance(_decide(delivered("alice@example.test"), report), NoReport)


def test_expired_report_goes_to_postmaster() -> None:
    report = received(Recipient(address="alice@example.test"), mail_from="", report_of="Q0")
    plan = _decide(expired("alice@example.test"), report)
    assert isinstance(plan, ReportPlan) and plan.to == POSTMASTER and plan.kind == "expiry"


# --- languages ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("accept", "content", "configured", "chosen"),
    [
        ("", "", "en", "en"),
        ("", "", "cs", "cs"),
        ("", "de", "en", "de"),
        ("", "de-AT", "en", "de"),
        ("", "tlh, fr (for the body)", "en", "fr"),
        ("", "tlh", "sk", "sk"),  # no catalog: the configured language
        ("ja", "de", "en", "ja"),  # what the sender wants to read wins
        ("tlh, pt-BR;q=0.8, de;q=0.9", "", "en", "de"),
        ("de;q=0, it", "", "en", "it"),
        ("*", "nl", "en", "nl"),
    ],
)
def test_language_choice(accept: str, content: str, configured: str, chosen: str) -> None:
    headers = OriginalHeaders(accept_language=accept, content_language=content)
    assert choose_language(headers, configured) == chosen


def test_language_from_the_original_header() -> None:
    body = b"From: a@b\r\nContent-Language: pl\r\nSubject: x\r\n\r\nhello\r\n"
    plan = _decide(failed(), received(), read_headers(body))
    assert isinstance(plan, ReportPlan) and plan.language == "pl"


@pytest.mark.parametrize(
    ("tag", "found"),
    [("cs", "cs"), ("CS", "cs"), ("pt-BR", "pt"), ("pt_PT", "pt"), ("en-GB", "en"), ("xx", None)],
)
def test_language_match(tag: str, found: str | None) -> None:
    assert languages.match(tag) == found


def test_unknown_report_language_is_a_config_error_listing_the_catalogs() -> None:
    with pytest.raises(ConfigError) as raised:
        load_config_text("queue:\n  report_language: tlh\n")
    message = "\n".join(raised.value.errors)
    assert "queue.report_language" in message
    for lang in languages.AVAILABLE:
        assert lang in message
    assert load_config_text("queue:\n  report_language: cs\n").queue.report_language == "cs"


# --- statuses and fields --------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "temporary", "category"),
    [
        ("5.1.1", False, "mailbox"),
        ("5.2.0", False, "mailbox"),
        ("5.1.2", False, "domain"),
        ("5.4.4", False, "domain"),
        ("5.2.2", False, "full"),
        ("5.3.4", False, "size"),
        ("5.7.1", False, "policy"),
        ("5.7.26", False, "policy"),
        ("4.4.7", False, "expired"),
        ("5.4.1", False, "network"),
        ("5.0.0", False, "other"),
        ("garbage", False, "other"),
        ("4.2.2", True, "full"),
        ("4.4.1", True, "network"),
        ("4.7.1", True, "policy"),
        ("4.3.0", True, "other"),
        ("4.1.1", True, "other"),
    ],
)
def test_categorize(status: str, temporary: bool, category: str) -> None:
    assert categorize(status, temporary) == category


@pytest.mark.parametrize(
    ("remote", "mta"),
    [
        ("mx.remote.test", "mx.remote.test"),
        ("relay.test[192.0.2.9]:25", "relay.test"),
        ("[192.0.2.9]:25", "[192.0.2.9]"),
        ("[2001:db8::1]:25", "[2001:db8::1]"),
        ("", ""),
    ],
)
def test_remote_mta(remote: str, mta: str) -> None:
    assert remote_mta(remote) == mta


@pytest.mark.parametrize(
    ("orcpt", "field"),
    [
        ("rfc822;bob@remote.test", "rfc822; bob@remote.test"),
        ("bob@remote.test", "rfc822; bob@remote.test"),
        ("x400; /C=cz/", "x400; /C=cz/"),
    ],
)
def test_original_recipient_field(orcpt: str, field: str) -> None:
    assert typed_address(orcpt) == field


# --- ids ------------------------------------------------------------------------------


def test_derived_queue_id_is_a_deterministic_subject_token() -> None:
    at = AT.timestamp()
    first = derived_queue_id("report:Q1.a1.failed", at)
    assert first == derived_queue_id("report:Q1.a1.failed", at)
    assert first != derived_queue_id("report:Q1.a2.failed", at)
    assert len(first) == 26 and set(first) <= set(_ALPHABET)
    # Sortable by the trigger's time, like ids from new_queue_id.
    assert derived_queue_id("report:Q1.a1.failed", at + 1) > first
