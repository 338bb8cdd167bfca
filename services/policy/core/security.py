"""The `security` limits, stage by stage: pure checks on facts the adapter looked up.

`needs` says which facts a query calls for (a KV read, a DNS look-up), so the
adapter does no I/O a decision cannot use; each `*_refusal` returns the
refusal or None. The exempt group skips every limit here but the mail-loop
check: a loop through a trusted relay is still a loop, and exempting it would
let a message circle forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from libs.common.contract.policy import PolicyDecision, PolicyQuery, SessionLimits, canonical_ip
from services.policy.core.address import Mailbox
from services.policy.core.blocks import Block, blocked
from services.policy.core.failures import FAILURE_WINDOW, FailedLogins
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
    ip = client_of(query)
    if ip is None or limits.exempts(ip):
        return Needs()
    if query.stage == "connect":
        return Needs(block=True, connections=limits.max_connections_per_ip > 0)
    if query.stage == "mail":
        domain = None
        if limits.require_sender_domain_dns and sender is not None and not sender.literal:
            domain = sender.domain or None
        return Needs(
            block=True, messages=limits.max_messages_per_hour_per_ip > 0, sender_domain=domain
        )
    if query.stage == "auth":
        return Needs(failed_logins=limits.max_failed_commands > 0)
    return Needs()


def session_limits(limits: SecurityLimits, client_ip: str | None) -> SessionLimits:
    if limits.exempts(client_ip):
        return SessionLimits(exempt=True)
    return SessionLimits(
        max_message_size=limits.max_message_size,
        max_failed_commands=limits.max_failed_commands,
    )


def _refuse(code: int, status: str, message: str, rule: str) -> PolicyDecision:
    action: Literal["reject", "defer"] = "defer" if code // 100 == 4 else "reject"
    return PolicyDecision(action=action, code=code, status=status, message=message, rule=rule)


def _active(block: Block | None, ip: str, now: datetime) -> Block | None:
    if block is None or block.client_ip != ip or not block.active_at(now):
        return None
    return block


def connect_refusal(
    query: PolicyQuery,
    limits: SecurityLimits,
    now: datetime,
    block: Block | None,
    connections: int,
) -> PolicyDecision | None:
    """`connections`: the client's open connections, this one included."""
    ip = client_of(query)
    if ip is None or limits.exempts(ip):
        return None
    active = _active(block, ip, now)
    if active is not None:
        return blocked(active)
    limit = limits.max_connections_per_ip
    if limit and connections > limit:
        return PolicyDecision(
            action="disconnect",
            code=421,
            status="4.7.0",
            message=f"Too many connections from {ip}, try again later",
            rule="max_connections_per_ip",
        )
    return None


def mail_refusal(
    query: PolicyQuery,
    limits: SecurityLimits,
    now: datetime,
    sender: Mailbox | None,
    block: Block | None,
    messages: SlidingCount | None,
    sender_domain: SenderDomain | None,
) -> PolicyDecision | None:
    ip = client_of(query)
    if ip is None or limits.exempts(ip):
        return None
    active = _active(block, ip, now)
    if active is not None:
        return blocked(active)
    size = limits.max_message_size
    if size and query.size is not None and query.size > size:
        return _too_big(size)
    limit = limits.max_messages_per_hour_per_ip
    if limit and messages is not None and messages.total(HOUR, now) >= limit:
        again = messages.below_at(HOUR, now, limit).astimezone(UTC)
        return _refuse(
            450,
            "4.7.1",
            f"Too many messages from {ip} in the last hour; "
            f"try again after {again.strftime('%H:%M')} UTC",
            "max_messages_per_hour_per_ip",
        )
    if limits.require_sender_domain_dns and sender is not None and not sender.literal:
        return _sender_domain_refusal(sender, sender_domain)
    return None


def _sender_domain_refusal(sender: Mailbox, found: SenderDomain | None) -> PolicyDecision | None:
    address = sender.address
    if found is None or found.domain != sender.domain or found.status == "temporary":
        return _refuse(
            451,
            "4.4.3",
            f"<{address}>: Sender address rejected: Domain lookup failed, try again later",
            "sender_domain_dns_tempfail",
        )
    if found.status == "missing":
        return _refuse(
            550,
            "5.1.8",
            f"<{address}>: Sender address rejected: Domain not found",
            "require_sender_domain_dns",
        )
    if found.status == "null_mx":
        # RFC 7505 section 4.2: a domain with a null MX sends no mail either.
        return _refuse(
            550,
            "5.7.27",
            f"<{address}>: Sender address rejected: Domain does not accept mail",
            "require_sender_domain_dns",
        )
    return None


def rcpt_refusal(query: PolicyQuery, limits: SecurityLimits) -> PolicyDecision | None:
    limit = limits.max_recipients
    if not limit or query.rcpt_count < limit or limits.exempts(client_of(query)):
        return None
    return _refuse(452, "4.5.3", "Too many recipients", "max_recipients")


def data_refusal(query: PolicyQuery, limits: SecurityLimits) -> PolicyDecision | None:
    hops = limits.max_received_headers
    if hops and query.received_headers > hops:
        return _refuse(
            554,
            "5.4.6",
            f"Too many Received headers ({query.received_headers}): mail loop detected",
            "max_received_headers",
        )
    size = limits.max_message_size
    if size and query.size is not None and query.size > size:
        if not limits.exempts(client_of(query)):
            return _too_big(size)
    return None


def _too_big(size: int) -> PolicyDecision:
    return _refuse(
        552, "5.3.4", f"Message size exceeds the limit of {size} bytes", "max_message_size"
    )


def auth_refusal(
    query: PolicyQuery, limits: SecurityLimits, now: datetime, failed: FailedLogins | None
) -> PolicyDecision | None:
    """Too many failed logins from the address: no more tries until the window passes.

    The limit is `max_failed_commands`, counted across sessions and replicas in
    the failed-login bucket; a failure keeps the address locked for FAILURE_WINDOW.
    """
    limit = limits.max_failed_commands
    ip = client_of(query)
    if not limit or failed is None or ip is None or limits.exempts(ip):
        return None
    if failed.count < limit or now >= failed.last_at + FAILURE_WINDOW:
        return None
    return _refuse(
        454, "4.7.0", f"Too many failed logins from {ip}, try again later", "auth_failures"
    )


def counts_message(query: PolicyQuery, decision: PolicyDecision, limits: SecurityLimits) -> bool:
    """An accepted message is counted against its client's hourly limit."""
    if query.stage != "data" or not decision.accepted or not limits.max_messages_per_hour_per_ip:
        return False
    ip = client_of(query)
    return ip is not None and not limits.exempts(ip)


def counts_unknown(query: PolicyQuery, decision: PolicyDecision, limits: SecurityLimits) -> bool:
    """An unknown local recipient counts towards a directory-harvest block."""
    if decision.rule != "unknown_recipient" or not limits.max_unknown_recipients:
        return False
    ip = client_of(query)
    return ip is not None and not limits.exempts(ip)
