"""Who may relay, and the limits that protect the server from its clients."""

from __future__ import annotations

from datetime import timedelta
from typing import Literal

from pydantic import Field

from .base import Section
from .fieldtypes import Count, GroupName, PositiveDuration, Size
from .units import parse_size


class Pop3BeforeSmtp(Section):
    enabled: bool = Field(
        default=False,
        description="Let the address of a successful POP3 login relay for a while. Off by "
        "default: everyone behind the same NAT address gets the same right.",
    )
    minutes: int = Field(
        default=30,
        ge=1,
        description="How many minutes a POP3 login lets its client address relay.",
    )

    @property
    def duration(self) -> timedelta:
        return timedelta(minutes=self.minutes)


class DirectoryHarvest(Section):
    max_unknown_recipients: Count = Field(
        default=10,
        description="Unknown local recipients an address may try before it is blocked; "
        "0 turns the check off.",
    )
    block_for: PositiveDuration = Field(
        default=timedelta(hours=1),
        description="How long such an address stays blocked.",
    )


class RelaySection(Section):
    mode: Literal["open", "restricted"] = Field(
        default="restricted",
        description="open: anyone may send to any domain, no relay checks at all (an open "
        "relay; a warning is logged at every start). restricted: mail to non-local domains "
        "only from the senders allowed below.",
    )
    allowed_ip_group: GroupName | None = Field(
        default=None,
        description="Name of an ip_groups entry whose addresses may relay to any domain; "
        "null: none.",
    )
    smtp_auth: bool = Field(
        default=True,
        description="Clients that authenticated with SMTP AUTH may relay to any domain.",
    )
    pop3_before_smtp: Pop3BeforeSmtp = Field(
        default_factory=Pop3BeforeSmtp,
        description="Relay rights for the address of a recent POP3 login.",
    )
    hide_local_ip_group: GroupName | None = Field(
        default=None,
        description="Name of an ip_groups entry whose client addresses are left out of the "
        "Received header mailbus adds (so internal addresses do not leak); null: off.",
    )
    antispam_for_allowed_group: bool = Field(
        default=False,
        description="Run the antispam checks on mail from allowed_ip_group too; false skips "
        "them for those addresses.",
    )


class SecuritySection(Section):
    exempt_ip_group: GroupName | None = Field(
        default=None,
        description="Name of an ip_groups entry to which none of the limits of this section "
        "apply; null: none.",
    )
    max_messages_per_hour_per_ip: Count = Field(
        default=500,
        description="Messages one client address may send per hour; past it, new messages "
        "are refused for the rest of that hour. 0: no limit.",
    )
    max_connections_per_ip: Count = Field(
        default=20,
        description="Concurrent SMTP connections from one client address, counted across all "
        "ingress replicas. 0: no limit.",
    )
    directory_harvest: DirectoryHarvest = Field(
        default_factory=DirectoryHarvest,
        description="Blocking of clients that probe for valid local addresses.",
    )
    require_sender_domain_dns: bool = Field(
        default=True,
        description="Refuse MAIL FROM when the sender's domain has no MX, A or AAAA record.",
    )
    max_recipients: Count = Field(
        default=100,
        description="RCPT commands accepted for one message. 0: no limit.",
    )
    max_failed_commands: Count = Field(
        default=10,
        description="Failed commands after which the connection is closed. 0: no limit.",
    )
    max_auth_failures_per_ip: Count = Field(
        default=10,
        description="Failed SMTP and POP3 logins from one client address per hour, counted "
        "across all policy replicas from the first failure on; past it, AUTH is refused "
        "with 454 4.7.0 for the rest of that hour. 0: no limit.",
    )
    max_message_size: Size = Field(
        default=parse_size("25MB"),
        description="Largest message accepted, advertised with the SIZE extension. 0: no limit.",
    )
    max_received_headers: int = Field(
        default=30,
        ge=1,
        description="A message with more Received headers than this is taken for a mail loop "
        "and refused.",
    )
    max_junk_commands: Count = Field(
        default=100,
        description="NOOP, RSET, VRFY and HELP commands one SMTP session may send; the next "
        "one is answered 421 4.7.0 and the session closed (Postfix's "
        "smtpd_junk_command_limit). 0: no limit.",
    )
    command_timeout: PositiveDuration = Field(
        default=timedelta(minutes=5),
        description="Longest wait for one SMTP command line; then 421 4.4.2 and the session "
        "is closed (Postfix's smtpd_timeout).",
    )
    data_timeout: PositiveDuration = Field(
        default=timedelta(minutes=5),
        description="Longest wait for the next piece of a message during DATA or BDAT; "
        "then 421 4.4.2 and the session is closed.",
    )
    min_data_rate: Count = Field(
        default=500,
        description="Bytes per second a message must keep arriving at, counted over the "
        "whole transfer from the 354 reply (Postfix's smtpd_min_data_rate); a slower "
        "message is cut off with 421 4.4.2. 0: off.",
    )
    tls_handshake_timeout: PositiveDuration = Field(
        default=timedelta(seconds=10),
        description="A STARTTLS, STLS or implicit-TLS handshake that takes longer is dropped.",
    )
