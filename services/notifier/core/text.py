"""The human-readable part of a report, in the reader's language.

Every string the reader sees is a literal inside a gettext call, so Babel's
extractor finds them all (tests compare the extraction with the catalogs).
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from datetime import datetime, timedelta, tzinfo
from typing import Protocol

from babel.dates import format_datetime, format_timedelta

from .decide import ReportedRecipient, ReportPlan
from .explain import Category, categorize
from .original import as_local

WIDTH = 76


class Translator(Protocol):
    """What the text needs of a gettext catalog (gettext.GNUTranslations has it)."""

    def gettext(self, message: str, /) -> str: ...

    def ngettext(self, singular: str, plural: str, n: int, /) -> str: ...


@dataclass(frozen=True)
class TextFacts:
    """Everything the text says besides the plan itself."""

    hostname: str
    queue_id: str
    arrival: datetime
    now: datetime
    subject: str = ""
    timezone: tzinfo | None = None
    will_retry_until: datetime | None = None
    attached: str = "none"  # "full", "headers" or "none"
    reported_sender: str = ""  # the addressee of the failed report, for the postmaster


def subject(plan: ReportPlan, tr: Translator, original_subject: str) -> str:
    if plan.kind == "failure":
        title = tr.gettext("Undelivered mail")
    elif plan.kind == "expiry":
        title = tr.gettext("Undelivered mail (time limit reached)")
    elif plan.kind == "delay":
        title = tr.gettext("Delayed mail (still trying)")
    else:
        title = tr.gettext("Message delivered")
    return f"{title}: {original_subject}" if original_subject else title


def human_text(plan: ReportPlan, facts: TextFacts, tr: Translator) -> str:
    paragraphs = [
        tr.gettext("This is the mail system at {hostname}.").format(hostname=facts.hostname),
        _intro(plan, facts, tr),
        _consequence(plan, facts, tr),
    ]
    blocks = [_fill(p) for p in paragraphs]
    blocks += [_recipient_block(plan, r, facts, tr) for r in plan.recipients]
    blocks.append(_about_message(facts, plan.language, tr))
    blocks.append(
        _fill(tr.gettext("Please do not reply to this message; it was written automatically."))
    )
    return "\n\n".join(blocks) + "\n"


def _intro(plan: ReportPlan, facts: TextFacts, tr: Translator) -> str:
    n = len(plan.recipients)
    if plan.about_report:
        return tr.gettext(
            "A delivery report that this mail system sent to {address} could not be delivered."
        ).format(address=facts.reported_sender)
    if plan.kind == "failure":
        text = tr.ngettext(
            "Your message could not be delivered to the following recipient.",
            "Your message could not be delivered to the following {count} recipients.",
            n,
        )
    elif plan.kind == "expiry":
        text = tr.ngettext(
            "Your message could not be delivered to the following recipient in time.",
            "Your message could not be delivered to the following {count} recipients in time.",
            n,
        )
    elif plan.kind == "delay":
        text = tr.ngettext(
            "Your message has not yet been delivered to the following recipient.",
            "Your message has not yet been delivered to the following {count} recipients.",
            n,
        )
    else:
        text = tr.ngettext(
            "Your message was delivered to the following recipient.",
            "Your message was delivered to the following {count} recipients.",
            n,
        )
    return text.format(count=n)


def _consequence(plan: ReportPlan, facts: TextFacts, tr: Translator) -> str:
    lang = plan.language
    if plan.about_report:
        return tr.gettext(
            "The mail system does not send reports about its own reports, so this one goes "
            "to the postmaster and nothing more will be tried. The address may be mistyped, "
            "or forged: spam often carries false sender addresses."
        )
    if plan.kind == "failure":
        return tr.gettext(
            "The receiving server refused it permanently, so the mail system has stopped trying."
        )
    if plan.kind == "expiry":
        return tr.gettext(
            "The mail system tried to deliver it from {arrival} on, but did not succeed before "
            "the time limit ({duration}) ran out, and has now given up."
        ).format(
            arrival=_date(facts.arrival, facts, lang),
            duration=_duration(facts.now - facts.arrival, lang),
        )
    if plan.kind == "delay":
        until = facts.will_retry_until
        if until is None:
            return tr.gettext(
                "This is only a warning; you do not need to send the message again. The mail "
                "system keeps trying and will send another report if it gives up."
            )
        return tr.gettext(
            "This is only a warning; you do not need to send the message again. The mail "
            "system will keep trying until {until} ({remaining} from now). If it still cannot "
            "deliver the message by then, you will get another report."
        ).format(
            until=_date(until, facts, lang),
            remaining=_duration(until - facts.now, lang),
        )
    return tr.gettext("You asked to be told when it was delivered. Nothing more needs to be done.")


def _recipient_block(
    plan: ReportPlan, rcpt: ReportedRecipient, facts: TextFacts, tr: Translator
) -> str:
    outcome = rcpt.outcome
    lines = [tr.gettext("Recipient:") + " " + outcome.address]
    original = _orcpt_address(rcpt.orcpt)
    if original and original.lower() != outcome.address.lower():
        lines.append("  " + tr.gettext("Originally addressed to:") + " " + original)
    if outcome.remote_host:
        lines.append("  " + tr.gettext("Receiving server:") + " " + outcome.remote_host)
    if outcome.diagnostic:
        lines.append(_labelled(tr.gettext("Server's reply:"), outcome.diagnostic))
    if plan.kind == "delay" and outcome.last_attempt_at is not None:
        when = _date(outcome.last_attempt_at, facts, plan.language)
        lines.append("  " + tr.gettext("Last attempt:") + " " + when)
    meaning, advice = _explanation(plan, outcome.action, outcome.status, outcome.address, tr)
    lines.append(_labelled(tr.gettext("What this means:"), meaning))
    if advice:
        lines.append(_labelled(tr.gettext("What you can do:"), advice))
    return "\n".join(lines)


def _explanation(
    plan: ReportPlan, action: str, status: str, address: str, tr: Translator
) -> tuple[str, str]:
    if plan.kind == "success":
        if action == "relayed":
            return (
                tr.gettext(
                    "The message was passed on to a server that does not send delivery "
                    "reports, so you will not be told whether it reaches the mailbox."
                ),
                "",
            )
        if action == "expanded":
            return (
                tr.gettext(
                    "The address is a mailing list or an alias; the message was passed on to "
                    "its members."
                ),
                "",
            )
        return tr.gettext("The receiving server confirmed the delivery."), ""
    if plan.kind == "delay":
        return _temporary_meaning(categorize(status, temporary=True), tr), ""
    category: Category = "expired" if plan.kind == "expiry" else categorize(status)
    return _permanent_meaning(category, tr), _advice(category, address, tr)


def _permanent_meaning(category: Category, tr: Translator) -> str:
    if category == "mailbox":
        return tr.gettext(
            "The receiving server says this mailbox does not exist or does not accept mail."
        )
    if category == "domain":
        return tr.gettext("The recipient's domain does not exist or does not receive mail.")
    if category == "full":
        return tr.gettext("The recipient's mailbox is full.")
    if category == "size":
        return tr.gettext("The message is larger than the receiving server accepts.")
    if category == "policy":
        return tr.gettext(
            "The receiving server refused the message because of its security or anti-spam rules."
        )
    if category == "network":
        return tr.gettext("The receiving server could not be reached.")
    if category == "expired":
        return tr.gettext(
            "The receiving server could not be reached, or kept postponing the message, until "
            "the time limit ran out."
        )
    return tr.gettext("The receiving server refused the message.")


def _temporary_meaning(category: Category, tr: Translator) -> str:
    if category == "full":
        return tr.gettext("The recipient's mailbox is full at the moment.")
    if category == "network":
        return tr.gettext("The receiving server cannot be reached at the moment.")
    if category == "policy":
        return tr.gettext(
            "The receiving server asked to try again later; anti-spam checks often do this."
        )
    return tr.gettext("The receiving server is temporarily unable to accept the message.")


def _advice(category: Category, address: str, tr: Translator) -> str:
    if category == "mailbox":
        return tr.gettext(
            "Check the address for typing mistakes and send the message again. If it is "
            "correct, ask the recipient for their current address."
        )
    if category == "domain":
        return tr.gettext("Check the part of the address after the @ sign for typing mistakes.")
    if category == "full":
        return tr.gettext(
            "Reach the recipient another way so they can make room, then send the message again."
        )
    if category == "size":
        return tr.gettext(
            "Send a smaller message, for example by sharing large attachments as a link."
        )
    if category == "policy":
        domain = address.rpartition("@")[2] or "example.com"
        return tr.gettext(
            "The server's reply may say why. If you believe this is a mistake, tell the "
            "administrator of the recipient's domain, for example at {postmaster}."
        ).format(postmaster=f"postmaster@{domain}")
    if category in ("network", "expired"):
        return tr.gettext(
            "Try sending the message again later. If it fails again, reach the recipient "
            "another way and let them know about the problem."
        )
    return tr.gettext(
        "The server's reply may say why. If you need help, forward this report to your mail "
        "administrator."
    )


def _about_message(facts: TextFacts, lang: str, tr: Translator) -> str:
    lines = [tr.gettext("About your message:")]
    if facts.subject:
        lines.append("  " + tr.gettext("Subject:") + " " + facts.subject)
    when = _date(facts.arrival, facts, lang)
    lines.append("  " + tr.gettext("Received by the mail system:") + " " + when)
    lines.append("  " + tr.gettext("Queue ID:") + " " + facts.queue_id)
    if facts.attached == "full":
        lines.append(tr.gettext("A copy of your message is attached."))
    elif facts.attached == "headers":
        lines.append(tr.gettext("The headers of your message are attached."))
    else:
        lines.append(
            tr.gettext("The message itself is no longer available, so it is not attached.")
        )
    return "\n".join(lines)


def _labelled(label: str, text: str) -> str:
    return textwrap.fill(
        f"{label} {text}",
        width=WIDTH,
        initial_indent="  ",
        subsequent_indent="    ",
        break_long_words=False,
        break_on_hyphens=False,
    )


def _fill(paragraph: str) -> str:
    return textwrap.fill(paragraph, width=WIDTH, break_long_words=False, break_on_hyphens=False)


def _orcpt_address(orcpt: str | None) -> str:
    if not orcpt:
        return ""
    kind, sep, address = orcpt.partition(";")
    return address.strip() if sep else kind.strip()


def _date(moment: datetime, facts: TextFacts, lang: str) -> str:
    local = as_local(moment, facts.timezone)
    return format_datetime(local, "long", tzinfo=local.tzinfo, locale=lang)


def _duration(delta: timedelta, lang: str) -> str:
    return format_timedelta(max(delta, timedelta(minutes=1)), threshold=2, locale=lang)
