"""SPF at MAIL and the spamd verdict at DATA: who is checked, and what each result does.

The adapter runs the checks (DNS, spamd) only when `spf_wanted` / `scan_wanted`
say so, and hands the outcome back here. Trusted senders skip both: the relay
group (unless `relay.antispam_for_allowed_group`), SMTP-authenticated users and
POP3-before-SMTP grants, as in Kerio Connect. `security.exempt_ip_group` is
about limits and skips nothing here.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Literal

from libs.common.contract import replies
from libs.common.contract.antispam import AntispamResults, SpamVerdict, SpfResult
from libs.common.contract.policy import PolicyDecision, PolicyQuery, canonical_ip
from services.policy.core.grants import Pop3Grant

if TYPE_CHECKING:  # rules.py holds AntispamRules, so it is imported the other way round
    from services.policy.core.rules import IpMatcher

Action = Literal["reject", "tag"]


@dataclass(frozen=True)
class AntispamRules:
    """The `antispam` section; the core default checks nothing."""

    spf: bool = False
    spf_fail_action: Action = "reject"
    spf_softfail_action: Action = "tag"
    scan: bool = False  # antispam.spamd is set
    spamd_max_size: int = 500 * 1024
    spamd_failure: Literal["accept", "tempfail"] = "accept"
    spam_tag_score: float = 5.0
    spam_reject_score: float = 10.0
    # relay.antispam_for_allowed_group: the relay group is checked like everyone else.
    for_allowed_group: bool = False


def skip_reason(
    query: PolicyQuery,
    rules: AntispamRules,
    allowed_ip_group: IpMatcher | None,
    now: datetime,
    grant: Pop3Grant | None = None,
) -> str | None:
    """Why this sender is not checked, or None when it is; the reason is recorded."""
    if query.session.auth_user:
        return "authenticated"
    client_ip = canonical_ip(query.session.client_ip)
    if client_ip is None:
        return None
    if allowed_ip_group is not None and allowed_ip_group.contains(client_ip):
        if not rules.for_allowed_group:
            return "allowed_ip_group"
    if grant is not None and grant.client_ip == client_ip and grant.valid_at(now):
        return "pop3_before_smtp"
    return None


def wanted(query: PolicyQuery, rules: AntispamRules, decision: PolicyDecision) -> bool:
    """Whether the antispam step runs on this accepted stage. Only a sender or message the
    rest of policy accepted costs DNS look-ups or a scan. MAIL says who is skipped even
    without SPF, so ingress does not send a skipped sender's message to be scanned."""
    if query.stage == "mail":
        return decision.rule == "mail_ok" and (rules.spf or rules.scan)
    return query.stage == "data" and decision.rule == "data_ok" and rules.scan


def spf_identity(sender: str, helo: str) -> tuple[str, str] | None:
    """(identity checked, its domain), or None when SPF can only say "none" without DNS:
    RFC 7208 section 4.3, a domain that is no multi-label name (an address literal, a
    bare word) is not looked up."""
    checked = sender or (f"postmaster@{helo}" if helo else "")
    domain = checked.rpartition("@")[2].rstrip(".")
    labels = domain.split(".")
    if len(labels) < 2 or not all(0 < len(label) < 64 for label in labels) or "[" in domain:
        return None
    return checked, domain


def skipped(decision: PolicyDecision, reason: str) -> PolicyDecision:
    return decision.model_copy(update={"antispam": AntispamResults(skipped=reason)})


def after_spf(decision: PolicyDecision, spf: SpfResult, rules: AntispamRules) -> PolicyDecision:
    """The MAIL decision once SPF has spoken (RFC 7208 section 8 leaves policy to us).

    permerror is accepted: the domain's record is broken, which says nothing of
    this client; refusing would punish the domain's mail for a typo, and the
    result stays in the headers for the recipient's filters.
    """
    action = {"fail": rules.spf_fail_action, "softfail": rules.spf_softfail_action}.get(spf.result)
    if action == "reject":
        reply = replies.spf_refused(spf.domain, spf.client_ip, spf.result)
        return PolicyDecision.of(reply, f"spf_{spf.result}")
    if spf.result == "temperror":
        return PolicyDecision.of(replies.spf_temperror(spf.domain), "spf_temperror")
    return decision.model_copy(update={"antispam": AntispamResults(spf=spf)})


def unscanned_verdict(query: PolicyQuery, rules: AntispamRules, sent: bool) -> SpamVerdict | None:
    """The verdict without a scan, when none can happen; None when spamd must be asked.

    `sent`: ingress sent the message along (it does up to spamd_max_size).
    """
    if query.size is not None and query.size > rules.spamd_max_size:
        return SpamVerdict(result="unscanned", tag_score=rules.spam_tag_score, unscanned="too_big")
    if not sent:
        return SpamVerdict(result="unscanned", tag_score=rules.spam_tag_score, unscanned="not_sent")
    return None


def after_scan(
    decision: PolicyDecision, verdict: SpamVerdict, rules: AntispamRules
) -> PolicyDecision:
    """The DATA decision once spamd has scored the message, or failed to."""
    if verdict.unscanned in ("spamd_unavailable", "spamd_timeout"):
        if rules.spamd_failure == "tempfail":
            return PolicyDecision.of(replies.SPAMD_UNAVAILABLE, "spamd_failure")
    if verdict.score is not None and verdict.score >= rules.spam_reject_score:
        return PolicyDecision.of(replies.SPAM_REFUSED, "spam_reject_score")
    return decision.model_copy(update={"antispam": AntispamResults(spam=verdict)})


def verdict_of(score: float, tests: tuple[str, ...], rules: AntispamRules) -> SpamVerdict:
    return SpamVerdict(
        result="spam" if score >= rules.spam_tag_score else "clean",
        score=score,
        tag_score=rules.spam_tag_score,
        tests=tests,
    )


def failed_scan(
    reason: Literal["spamd_unavailable", "spamd_timeout"], rules: AntispamRules
) -> SpamVerdict:
    return SpamVerdict(result="unscanned", tag_score=rules.spam_tag_score, unscanned=reason)
