"""Every accept/refuse decision, one function per SMTP stage, each naming its rule.

`decide` is total: whatever the query, it returns a PolicyDecision and never
raises, so the adapter has nothing to translate but the wire format. What
only I/O can learn (a password check, a stored grant) comes in as `Facts`,
gathered by the adapter; the decision itself stays here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from libs.common.contract import replies
from libs.common.contract.policy import PolicyDecision, PolicyQuery, canonical_ip
from services.policy.core import security
from services.policy.core.address import Mailbox, parse_path, routing_trick
from services.policy.core.blocks import Block
from services.policy.core.directory import mailbox_key
from services.policy.core.errors import AddressError
from services.policy.core.failures import FailedLogins
from services.policy.core.grants import Pop3Grant
from services.policy.core.rules import PolicyRules
from services.policy.core.security import SenderDomain
from services.policy.core.window import SlidingCount


@dataclass(frozen=True)
class Facts:
    """What the adapter found out for this query; the defaults grant nothing."""

    password_ok: bool = False  # auth: the password matched the account's hash
    pop3_grant: Pop3Grant | None = None  # rcpt: the stored grant of the client address
    block: Block | None = None  # connect, mail: the stored block of the client address
    connections: int = 0  # connect: the client's open connections, this one included
    messages: SlidingCount | None = None  # mail: messages the client sent recently
    sender_domain: SenderDomain | None = None  # mail: what DNS said of the sender's domain
    failed_logins: FailedLogins | None = None  # auth: recent failed logins of the client


NO_FACTS = Facts()

StageRule = Callable[[PolicyQuery, PolicyRules, datetime, Facts], PolicyDecision]

AUTH_MECHANISMS = ("PLAIN", "LOGIN")


def _connect(query: PolicyQuery, rules: PolicyRules, now: datetime, facts: Facts) -> PolicyDecision:
    limits = rules.limits
    refusal = security.connect_refusal(query, limits, now, facts.block, facts.connections)
    if refusal is not None:
        return refusal
    client_ip = canonical_ip(query.session.client_ip)
    session = security.session_limits(limits, client_ip)
    rule = "exempt_ip_group" if session.exempt else "connect_ok"
    return PolicyDecision.accept(rule).model_copy(update={"limits": session})


def _helo(query: PolicyQuery, rules: PolicyRules, now: datetime, facts: Facts) -> PolicyDecision:
    return PolicyDecision.accept("helo_ok")


def _auth(query: PolicyQuery, rules: PolicyRules, now: datetime, facts: Facts) -> PolicyDecision:
    if (query.mechanism or "").upper() not in AUTH_MECHANISMS:
        return PolicyDecision.of(replies.UNKNOWN_MECHANISM, "auth_mechanism")
    if not query.session.tls and query.session.listener not in rules.plaintext_login_listeners:
        # Ingress never offers AUTH in plain text; this holds even if a listener forgot.
        # Only a POP3 listener the operator set to `tls: none` may log in without TLS.
        return PolicyDecision.of(replies.ENCRYPTION_REQUIRED, "auth_tls")
    if query.session.auth_user:
        return PolicyDecision.of(replies.ALREADY_AUTHENTICATED, "auth_twice")
    locked = security.auth_refusal(query, rules.limits, now, facts.failed_logins)
    if locked is not None:
        return locked
    account = rules.directory.login(query.username or "")
    if account is None or account.password_hash is None or not facts.password_ok:
        return PolicyDecision.of(replies.AUTH_FAILED, "auth_failed")
    return PolicyDecision.of(replies.AUTHENTICATED, "auth_ok", canonical=account.address)


def _mail(query: PolicyQuery, rules: PolicyRules, now: datetime, facts: Facts) -> PolicyDecision:
    if query.mail_from is None:
        return PolicyDecision.of(replies.MAIL_SYNTAX, "mail_missing")
    try:
        sender = parse_path(query.mail_from)
    except AddressError as exc:
        return PolicyDecision.of(replies.bad_sender(exc.reason), "mail_syntax")
    # A source route on the sender is ignored (RFC 5321 appendix C); the null sender is valid.
    if sender is not None and not sender.domain:
        return PolicyDecision.of(replies.bad_sender("no domain"), "mail_syntax")
    refusal = security.mail_refusal(
        query,
        rules.limits,
        now,
        sender,
        facts.block,
        facts.messages,
        facts.sender_domain,
        rules.local_domains,
    )
    if refusal is not None:
        return refusal
    canonical = sender.address if sender is not None else ""
    return PolicyDecision.of(replies.SENDER_OK, "mail_ok", canonical=canonical)


def _rcpt(query: PolicyQuery, rules: PolicyRules, now: datetime, facts: Facts) -> PolicyDecision:
    if query.rcpt is None:
        return PolicyDecision.of(replies.RCPT_SYNTAX, "rcpt_missing")
    too_many = security.rcpt_refusal(query, rules.limits)
    if too_many is not None:
        return too_many
    try:
        rcpt = parse_path(query.rcpt)
    except AddressError as exc:
        return PolicyDecision.of(replies.bad_recipient(exc.reason), "rcpt_syntax")
    if rcpt is None:
        return PolicyDecision.of(replies.NULL_RECIPIENT, "rcpt_syntax")
    trick = routing_trick(rcpt)
    if trick is not None:
        return PolicyDecision.of(trick.reply, trick.rule)
    if is_local(rcpt, rules):
        return _local_rcpt(rcpt, rules)
    rule = _relay_rule(query, rules, now, facts)
    if rule is None:
        return PolicyDecision.of(replies.RELAY_DENIED, "relay_denied")
    return _accept_rcpt(rule, rcpt.address)


def is_local(rcpt: Mailbox, rules: PolicyRules) -> bool:
    """Bare <postmaster>, or a local domain by name: an address literal is never local."""
    return not rcpt.domain or (not rcpt.literal and rules.is_local_domain(rcpt.domain))


def _local_rcpt(rcpt: Mailbox, rules: PolicyRules) -> PolicyDecision:
    """Local recipients exist or are refused, whatever the relay mode."""
    found = rules.directory.recipient(rcpt) if rcpt.domain else None
    if found is not None:
        own = mailbox_key(rcpt) in rules.directory.accounts
        return _accept_rcpt("local_user" if own else "local_alias", found)
    if rcpt.local.lower() == "postmaster":
        # RFC 5321 section 4.5.1: postmaster of every local domain must be accepted.
        return _accept_rcpt("postmaster", _postmaster(rules) or rcpt.address)
    return PolicyDecision.of(replies.unknown_recipient(rcpt.address), "unknown_recipient")


def _postmaster(rules: PolicyRules) -> str:
    """server.postmaster, resolved to its account when it is a local user or alias."""
    try:
        target = parse_path(rules.postmaster) if rules.postmaster else None
    except AddressError:
        return rules.postmaster
    if target is None:
        return ""
    if target.domain and rules.is_local_domain(target.domain):
        return rules.directory.recipient(target) or target.address
    return target.address


def _accept_rcpt(rule: str, canonical: str) -> PolicyDecision:
    return PolicyDecision.of(replies.RECIPIENT_OK, rule, canonical=canonical)


def _relay_rule(query: PolicyQuery, rules: PolicyRules, now: datetime, facts: Facts) -> str | None:
    """The rule that lets a non-local recipient through, or None when relaying is denied."""
    if rules.relay_mode == "open":
        return "relay_open"
    group = rules.allowed_ip_group
    client_ip = canonical_ip(query.session.client_ip)
    if group is not None and client_ip is not None and group.contains(client_ip):
        return "allowed_ip_group"
    if rules.relay_for_authenticated and query.session.auth_user:
        return "authenticated"
    grant = facts.pop3_grant
    if (
        rules.pop3_grant is not None
        and grant is not None
        and client_ip is not None
        and grant.client_ip == client_ip
        and grant.valid_at(now)
    ):
        return "pop3_before_smtp"
    return None


def needs(query: PolicyQuery, rules: PolicyRules) -> security.Needs:
    """The facts `decide` will want for this query (see security.needs)."""
    sender = None
    if query.stage == "mail" and query.mail_from:
        try:
            sender = parse_path(query.mail_from)
        except AddressError:
            sender = None  # refused for its syntax; nothing to look up
    return security.needs(query, rules, sender)


def wants_pop3_grant(decision: PolicyDecision, rules: PolicyRules) -> bool:
    """Only a relay refusal can be turned around by a grant: look one up for nothing else."""
    return decision.rule == "relay_denied" and rules.pop3_grant is not None


def _data(query: PolicyQuery, rules: PolicyRules, now: datetime, facts: Facts) -> PolicyDecision:
    refusal = security.data_refusal(query, rules.limits)
    return refusal if refusal is not None else PolicyDecision.accept("data_ok")


STAGES: dict[str, StageRule] = {
    "connect": _connect,
    "helo": _helo,
    "auth": _auth,
    "mail": _mail,
    "rcpt": _rcpt,
    "data": _data,
}


def decide(
    query: PolicyQuery, rules: PolicyRules, now: datetime, facts: Facts = NO_FACTS
) -> PolicyDecision:
    """Answer one policy query; `now` is the clock grants, blocks and rates are read with."""
    return STAGES[query.stage](query, rules, now, facts)
