"""The request/reply contract between ingress and policy: the models both sides agree on.

Ingress asks; policy decides. A decision carries its SMTP reply and the name
of the rule that made it, so logs, metrics and the MessageReceived event can
say why. When policy does not answer in time the client
(`libs/common/runtime/policy_client.py`) fails closed with `POLICY_UNAVAILABLE`:
nothing is accepted on a guess. Pure: no NATS here, so policy's core can use it.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

from pydantic import BaseModel, ConfigDict

from libs.common.contract import replies
from libs.common.contract.antispam import AntispamResults
from libs.common.contract.replies import SmtpReply

Action = Literal["accept", "reject", "defer", "disconnect"]
Stage = Literal["connect", "helo", "auth", "mail", "rcpt", "data"]


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Session(_Model):
    """What policy knows of the SMTP session asking."""

    session_id: str
    client_ip: str
    client_port: int = 0
    listener: str = ""
    helo: str = ""
    tls: bool = False
    auth_user: str | None = None


class HeldConnections(_Model):
    """Sent at connect: the asking ingress instance's own open connections from the
    client's address, this one included. Policy adds the other instances' counts from
    its copy (ConnectionReport); an instance's own count travels with the query, so two
    connections racing on one instance never both take the last slot."""

    instance: str
    count: int


class PolicyQuery(_Model):
    stage: Stage
    session: Session
    mail_from: str | None = None
    rcpt: str | None = None
    rcpt_count: int = 0  # recipients already accepted in this transaction
    size: int | None = None  # SIZE= at MAIL, actual size at DATA
    received_headers: int = 0
    mechanism: str | None = None
    username: str | None = None
    password: str | None = None
    # connect only; None from an ingress older than the connection reports, which
    # counts with leases in the connections bucket instead.
    held: HeldConnections | None = None
    # mail only: the recipients of RCPT commands pipelined behind this MAIL (RFC 2920),
    # to be decided in order after it, each as its own rcpt query would be.
    rcpts: tuple[str, ...] = ()
    # With `rcpts`: the refusals after which ingress closes the session (what is left of
    # security.max_failed_commands), so policy decides no RCPT ingress would not ask;
    # 0: no limit.
    refusals_left: int = 0


class ConnectionReport(_Model):
    """What one ingress instance tells every policy replica of its open connections.

    `full`: the instance's whole table (a heartbeat, every `ttl` / 3 seconds, and on a
    policy replica's hello); otherwise only the addresses listed changed (an open or a
    close, sent at once). Counts are absolute, never deltas: a report lost or repeated
    costs nothing but a moment's staleness, repaired by the next one. An instance not
    heard from for `ttl` seconds counts nothing (it crashed or was cut off); a `ttl` of 0
    says it is stopping.
    """

    instance: str
    seq: int
    ttl: float
    full: bool
    counts: dict[str, int]


class SessionLimits(_Model):
    """Limits ingress enforces inside one session, as policy set them at connect.

    Policy decides the values (the exempt group gets none); ingress applies them
    because only it sees every byte and every failed command. 0 means no limit.
    """

    max_message_size: int = 0
    max_failed_commands: int = 0
    # The client is in security.exempt_ip_group: its connections need not be counted.
    exempt: bool = False


class PolicyDecision(_Model):
    action: Action
    code: int
    status: str  # RFC 3463 enhanced status code
    message: str
    rule: str
    # Set by policy when it has rewritten something, e.g. the canonical local user.
    canonical: str | None = None
    # Set on an accepted connect: what ingress enforces for the rest of the session.
    limits: SessionLimits | None = None
    # Set on MAIL and DATA when antispam ran or was skipped: the SPF result, the spam verdict.
    antispam: AntispamResults | None = None
    # The configuration revision the decision was made under (0: the file the policy
    # replica started with, before any revision was applied; None: not from policy).
    config_revision: int | None = None
    # Answering a mail query with `rcpts`: the decisions of those recipients, in order,
    # up to the first that ends the session; none when MAIL was refused.
    rcpts: tuple[PolicyDecision, ...] | None = None

    @property
    def accepted(self) -> bool:
        return self.action == "accept"

    @property
    def smtp_reply(self) -> str:
        return str(SmtpReply(self.code, self.status, self.message))

    @classmethod
    def of(cls, reply: SmtpReply, rule: str, canonical: str | None = None) -> PolicyDecision:
        """The decision that answers with `reply`; its action follows from the code."""
        return cls(
            action=action_of(reply.code),
            code=reply.code,
            status=reply.status,
            message=reply.text,
            rule=rule,
            canonical=canonical,
        )

    @classmethod
    def accept(cls, rule: str) -> PolicyDecision:
        return cls.of(replies.OK, rule)


def action_of(code: int) -> Action:
    """2xx accepts, 4xx defers, 5xx rejects; a 421 also ends the session (RFC 5321 3.8)."""
    if code // 100 == 2:
        return "accept"
    if code == 421:
        return "disconnect"
    return "defer" if code // 100 == 4 else "reject"


def canonical_ip(text: str) -> str | None:
    """The client address as grants, counters, leases and groups key it.

    Compressed form, brackets and zone dropped; an IPv4-mapped IPv6 address
    counts as IPv4. Without this, `::ffff:192.0.2.1` and `192.0.2.1` would hold
    separate counts for the same client.
    """
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)


POLICY_UNAVAILABLE = PolicyDecision.of(replies.POLICY_UNAVAILABLE, "policy_unavailable")
