"""The `security` limits, stage by stage: pure checks on facts the adapter looked up.

`needs` says which facts a query calls for (a KV read, a DNS look-up), so the
adapter does no I/O a decision cannot use; each `*_refusal` returns the
refusal or None. The exempt group skips every limit here but the mail-loop
check: a loop through a trusted relay is still a loop, and exempting it would
let a message circle forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal, TypeGuard

from libs.common.contract import replies
from libs.common.contract.policy import PolicyDecision, PolicyQuery, SessionLimits, canonical_ip
from services.policy.core.address import Mailbox
from services.policy.core.blocks import HARVEST_RULE, Block, blocked
from services.policy.core.failures import FailedLogins, locked
from services.policy.core.rules import PolicyRules, SecurityLimits
from services.policy.core.window import HOUR, SlidingCount

DomainStatus = Literal["found", "null_mx", "missing", "temporary"]


@dataclass(frozen=True)
class SenderDomain:
    """What DNS said about the sender's domain (MX, else A or AAAA)."""

    domain: str
    status: DomainStatus
    detail: str = ""  # for logs: "NXDOMAIN", "timeout", "SERVFAIL", ...


@dataclass(frozen=True)
class Needs:
    """Which facts the adapter should look up before deciding this query."""

    block: bool = False
    connections: bool = False
    messages: bool = False
    sender_domain: str | None = None
    failed_logins: bool = False


def client_of(query: PolicyQuery) -> str | None:
    return canonical_ip(query.session.client_ip)


def needs(query: PolicyQuery, rules: PolicyRules, sender: Mailbox | None = None) -> Needs:
    """`sender` is the parsed MAIL FROM (None for `<>` or when it did not parse)."""
    limits = rules.limits
    if _limited(query, limits) is None:
        return Needs()
    if query.stage == "connect":
        return Needs(block=True, connections=limits.max_connections_per_ip > 0)
    if query.stage == "mail":
        domain = None
        if checks_sender_domain(limits, sender, rules.local_domains):
            assert sender is not None
            domain = sender.domain or None
        return Needs(
            block=True, messages=limits.max_messages_per_hour_per_ip > 0, sender_domain=domain
        )
    if query.stage == "auth":
        return Needs(failed_logins=limits.max_auth_failures_per_ip > 0)
    return Needs()


def session_limits(limits: SecurityLimits, client_ip: str | None) -> SessionLimits:
    if limits.exempts(client_ip):
        return SessionLimits(exempt=True)
    return SessionLimits(
        max_message_size=limits.max_message_size,
        max_failed_commands=limits.max_failed_commands,
    )


def _in_force(block: Block | None, ip: str, now: datetime) -> TypeGuard[Block]:
    return block is not None and block.client_ip == ip and block.active_at(now)


def _limited(query: PolicyQuery, limits: SecurityLimits) -> str | None:
    """The client address the limits apply to; None when they do not (exempt, no address)."""
    ip = client_of(query)
    return None if ip is None or limits.exempts(ip) else ip


def connect_refusal(
    query: PolicyQuery,
    limits: SecurityLimits,
    now: datetime,
    block: Block | None,
    connections: int,
) -> PolicyDecision | None:
    """`connections`: the client's open connections, this one included."""
    ip = _limited(query, limits)
    if ip is None:
        return None
    if _in_force(block, ip, now):
        return blocked(block)
    limit = limits.max_connections_per_ip
    if limit and connections > limit:
        return PolicyDecision.of(replies.too_many_connections(ip), "max_connections_per_ip")
    return None


def mail_refusal(
    query: PolicyQuery,
    limits: SecurityLimits,
    now: datetime,
    sender: Mailbox | None,
    block: Block | None,
    messages: SlidingCount | None,
    sender_domain: SenderDomain | None,
    local_domains: frozenset[str] = frozenset(),
) -> PolicyDecision | None:
    ip = _limited(query, limits)
    if ip is None:
        return None
    if _in_force(block, ip, now):
        return blocked(block)
    size = limits.max_message_size
    if size and query.size is not None and query.size > size:
        return _too_big(size)
    limit = limits.max_messages_per_hour_per_ip
    if limit and messages is not None and messages.total(HOUR, now) >= limit:
        again = messages.below_at(HOUR, now, limit)
        return PolicyDecision.of(
            replies.too_many_messages(ip, again), "max_messages_per_hour_per_ip"
        )
    if checks_sender_domain(limits, sender, local_domains):
        assert sender is not None
        return _sender_domain_refusal(sender, sender_domain)
    return None


def checks_sender_domain(
    limits: SecurityLimits, sender: Mailbox | None, local_domains: frozenset[str]
) -> bool:
    """require_sender_domain_dns, but never for the server's own domains: an internal
    domain often has no public DNS, and mailbus is its final destination anyway (as
    Postfix's reject_unknown_sender_domain leaves out the domains it delivers)."""
    if not limits.require_sender_domain_dns or sender is None or sender.literal:
        return False
    return sender.domain not in local_domains


def _sender_domain_refusal(sender: Mailbox, found: SenderDomain | None) -> PolicyDecision | None:
    address = sender.address
    if found is None or found.domain != sender.domain or found.status == "temporary":
        return PolicyDecision.of(
            replies.sender_domain_tempfail(address), "sender_domain_dns_tempfail"
        )
    if found.status == "missing":
        return PolicyDecision.of(
            replies.sender_domain_missing(address), "require_sender_domain_dns"
        )
    if found.status == "null_mx":
        return PolicyDecision.of(
            replies.sender_domain_null_mx(address), "require_sender_domain_dns"
        )
    return None


def rcpt_refusal(query: PolicyQuery, limits: SecurityLimits) -> PolicyDecision | None:
    limit = limits.max_recipients
    if not limit or query.rcpt_count < limit or limits.exempts(client_of(query)):
        return None
    return PolicyDecision.of(replies.TOO_MANY_RECIPIENTS, "max_recipients")


def data_refusal(query: PolicyQuery, limits: SecurityLimits) -> PolicyDecision | None:
    hops = limits.max_received_headers
    if hops and query.received_headers > hops:
        return PolicyDecision.of(replies.mail_loop(query.received_headers), "max_received_headers")
    size = limits.max_message_size
    if size and query.size is not None and query.size > size:
        if not limits.exempts(client_of(query)):
            return _too_big(size)
    return None


def _too_big(size: int) -> PolicyDecision:
    return PolicyDecision.of(replies.too_big(size), "max_message_size")


def auth_refusal(
    query: PolicyQuery, limits: SecurityLimits, now: datetime, failed: FailedLogins | None
) -> PolicyDecision | None:
    """Too many failed logins from the address: no more tries until its window ends.

    The limit is `max_auth_failures_per_ip` per FAILURE_WINDOW, counted across
    sessions and replicas in the failed-login bucket from the first failure on.
    """
    ip = _limited(query, limits)
    if ip is None or not locked(failed, limits.max_auth_failures_per_ip, now):
        return None
    return PolicyDecision.of(replies.too_many_failed_logins(ip), "auth_failures")


def auth_limit(query: PolicyQuery, limits: SecurityLimits) -> int:
    """The failed-login limit that applies to this client; 0: none (still counted)."""
    return limits.max_auth_failures_per_ip if _limited(query, limits) is not None else 0


def counts_message(query: PolicyQuery, decision: PolicyDecision, limits: SecurityLimits) -> bool:
    """An accepted message is counted against its client's hourly limit."""
    if query.stage != "data" or not decision.accepted or not limits.max_messages_per_hour_per_ip:
        return False
    return _limited(query, limits) is not None


def counts_unknown(query: PolicyQuery, decision: PolicyDecision, limits: SecurityLimits) -> bool:
    """An unknown local recipient counts towards a directory-harvest block."""
    if decision.rule != "unknown_recipient" or not limits.max_unknown_recipients:
        return False
    return _limited(query, limits) is not None


def harvest_answer(decision: PolicyDecision) -> PolicyDecision:
    """The unknown recipient that starts a directory-harvest block: the client is still
    told it is unknown (550 5.1.1), and the session ends after that reply; from then on
    the block refuses the address (at connect and MAIL, on every replica)."""
    return decision.model_copy(update={"action": "disconnect", "rule": HARVEST_RULE})
