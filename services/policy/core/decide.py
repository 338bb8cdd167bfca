"""Every accept/refuse decision, one function per SMTP stage, each naming its rule.

`decide` is total: whatever the query, it returns a PolicyDecision and never
raises, so the adapter has nothing to translate but the wire format.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable
from datetime import datetime

from libs.common.policy_api import PolicyDecision, PolicyQuery
from services.policy.core.address import AddressError, Mailbox, parse_path, routing_trick
from services.policy.core.rules import PolicyRules

StageRule = Callable[[PolicyQuery, PolicyRules, datetime], PolicyDecision]

RELAY_DENIED_MESSAGE = "Relay access denied"


def reject(code: int, status: str, message: str, rule: str) -> PolicyDecision:
    return PolicyDecision(action="reject", code=code, status=status, message=message, rule=rule)


def _connect(query: PolicyQuery, rules: PolicyRules, now: datetime) -> PolicyDecision:
    return PolicyDecision.accept("connect_ok")


def _helo(query: PolicyQuery, rules: PolicyRules, now: datetime) -> PolicyDecision:
    return PolicyDecision.accept("helo_ok")


def _auth(query: PolicyQuery, rules: PolicyRules, now: datetime) -> PolicyDecision:
    # No user directory yet: refusing is the only answer that cannot open the relay.
    return reject(535, "5.7.8", "Authentication credentials invalid", "auth_unavailable")


def _mail(query: PolicyQuery, rules: PolicyRules, now: datetime) -> PolicyDecision:
    if query.mail_from is None:
        return reject(501, "5.5.4", "Syntax: MAIL FROM:<address>", "mail_missing")
    try:
        sender = parse_path(query.mail_from)
    except AddressError as exc:
        return reject(501, "5.1.7", f"Bad sender address syntax: {exc.reason}", "mail_syntax")
    # A source route on the sender is ignored (RFC 5321 appendix C); the null sender is valid.
    if sender is not None and not sender.domain:
        return reject(501, "5.1.7", "Bad sender address syntax: no domain", "mail_syntax")
    return PolicyDecision(
        action="accept",
        code=250,
        status="2.1.0",
        message="Ok",
        rule="mail_ok",
        canonical=sender.address if sender is not None else "",
    )


def _rcpt(query: PolicyQuery, rules: PolicyRules, now: datetime) -> PolicyDecision:
    if query.rcpt is None:
        return reject(501, "5.5.4", "Syntax: RCPT TO:<address>", "rcpt_missing")
    try:
        rcpt = parse_path(query.rcpt)
    except AddressError as exc:
        return reject(501, "5.1.3", f"Bad recipient address syntax: {exc.reason}", "rcpt_syntax")
    if rcpt is None:
        return reject(501, "5.1.3", "The null address is not a recipient", "rcpt_syntax")
    trick = routing_trick(rcpt)
    if trick is not None:
        return reject(553, "5.1.3", trick.message, trick.rule)
    rule = _relay_rule(rcpt, query, rules)
    if rule is None:
        return reject(554, "5.7.1", RELAY_DENIED_MESSAGE, "relay_denied")
    return PolicyDecision(
        action="accept", code=250, status="2.1.5", message="Ok", rule=rule, canonical=rcpt.address
    )


def _relay_rule(rcpt: Mailbox, query: PolicyQuery, rules: PolicyRules) -> str | None:
    """The rule that lets this recipient through, or None when relaying is denied."""
    if rules.relay_mode == "open":
        return "relay_open"
    if not rcpt.domain:
        return "postmaster"
    if not rcpt.literal and rules.is_local_domain(rcpt.domain):
        return "local_domain"
    group = rules.allowed_ip_group
    client_ip = _client_ip(query.session.client_ip)
    if group is not None and client_ip is not None and group.contains(client_ip):
        return "allowed_ip_group"
    if rules.relay_for_authenticated and query.session.auth_user:
        return "authenticated"
    return None


def _client_ip(text: str) -> str | None:
    """The client's address in canonical form; an IPv4-mapped IPv6 address counts as IPv4."""
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


def _data(query: PolicyQuery, rules: PolicyRules, now: datetime) -> PolicyDecision:
    return PolicyDecision.accept("data_ok")


STAGES: dict[str, StageRule] = {
    "connect": _connect,
    "helo": _helo,
    "auth": _auth,
    "mail": _mail,
    "rcpt": _rcpt,
    "data": _data,
}


def decide(query: PolicyQuery, rules: PolicyRules, now: datetime) -> PolicyDecision:
    """Answer one policy query; `now` is the clock later rules (rates, grants) read."""
    return STAGES[query.stage](query, rules, now)
