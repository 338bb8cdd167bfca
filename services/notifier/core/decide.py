"""Whether a report is due, to whom, about which recipients, and in which language.

The rules, in order:
1. A failed or expired report of ours (`report_of` set) goes once to the postmaster;
   if that report was itself addressed to the postmaster it is dropped, which ends
   any loop. Delays and successes of reports are never reported.
2. A message from the null sender gets no report (RFC 5321 section 4.5.5).
3. A message that is itself a report or an automatic reply gets none either.
4. Each recipient's NOTIFY decides (RFC 3461): NEVER never; SUCCESS, FAILURE and
   DELAY each for their kind; without NOTIFY, failures and delays are reported.
"""

from __future__ import annotations

from dataclasses import dataclass

from libs.common.contract.events import MessageReceived, Recipient, RecipientOutcome
from libs.common.mail import languages

from .original import OriginalHeaders
from .triggers import Kind, Trigger

_NOTIFY_OF: dict[Kind, str] = {
    "failure": "FAILURE",
    "expiry": "FAILURE",
    "delay": "DELAY",
    "success": "SUCCESS",
}
# Reported when the sender gave no NOTIFY: failures always, delays by our choice.
_DEFAULT_NOTIFY = frozenset({"FAILURE", "DELAY"})


@dataclass(frozen=True)
class ReportedRecipient:
    outcome: RecipientOutcome
    orcpt: str | None = None


@dataclass(frozen=True)
class ReportPlan:
    kind: Kind
    to: str
    recipients: tuple[ReportedRecipient, ...]
    language: str
    # The message reported on is one of our reports: this copy goes to the postmaster.
    about_report: bool = False


@dataclass(frozen=True)
class NoReport:
    reason: str


def decide(
    trigger: Trigger,
    received: MessageReceived,
    headers: OriginalHeaders | None,
    postmaster: str,
    default_language: str,
) -> ReportPlan | NoReport:
    fallback = languages.match(default_language) or languages.DEFAULT
    if received.report_of is not None:
        return _about_report(trigger, received, postmaster, fallback)
    if received.mail_from == "":
        return NoReport("null sender")
    if headers is not None and headers.is_report:
        return NoReport("the message is itself a report or an automatic reply")
    wanted = _NOTIFY_OF[trigger.kind]
    chosen: list[ReportedRecipient] = []
    for outcome in trigger.outcomes:
        rcpt = _recipient(received, outcome.address)
        notify = {n.upper() for n in rcpt.notify} if rcpt is not None else set()
        if "NEVER" in notify or wanted not in (notify or _DEFAULT_NOTIFY):
            continue
        chosen.append(ReportedRecipient(outcome, rcpt.orcpt if rcpt is not None else None))
    if not chosen:
        return NoReport(f"no recipient asked for NOTIFY={wanted}")
    return ReportPlan(
        kind=trigger.kind,
        to=received.mail_from,
        recipients=tuple(chosen),
        language=choose_language(headers, fallback),
    )


def choose_language(headers: OriginalHeaders | None, configured: str) -> str:
    """Accept-Language of the original (what its sender wants to read), then its
    Content-Language (what the sender writes in), then queue.report_language."""
    if headers is not None:
        for found in (
            languages.first_match(languages.accept_language_tags(headers.accept_language)),
            languages.first_match(languages.content_language_tags(headers.content_language)),
        ):
            if found is not None:
                return found
    return configured


def _about_report(
    trigger: Trigger, received: MessageReceived, postmaster: str, language: str
) -> ReportPlan | NoReport:
    if trigger.kind not in ("failure", "expiry"):
        return NoReport("only the failure of a report is reported")
    if any(same_address(r.address, postmaster) for r in received.recipients):
        return NoReport("a report to the postmaster that fails is dropped")
    if not trigger.outcomes:
        return NoReport("no recipient to report on")
    return ReportPlan(
        kind=trigger.kind,
        to=postmaster,
        recipients=tuple(ReportedRecipient(o) for o in trigger.outcomes),
        language=language,
        about_report=True,
    )


def _recipient(received: MessageReceived, address: str) -> Recipient | None:
    for rcpt in received.recipients:
        if rcpt.address == address:
            return rcpt
    for rcpt in received.recipients:
        if same_address(rcpt.address, address):
            return rcpt
    return None


def same_address(a: str, b: str) -> bool:
    # Local parts may be case-sensitive, but "Postmaster" is the same mailbox everywhere.
    return a.strip().lower() == b.strip().lower()
