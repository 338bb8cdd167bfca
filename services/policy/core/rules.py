"""The part of the configuration policy decides with, as plain frozen data.

The core never sees the YAML model: the service builds `PolicyRules` from the
Config once at start, and unit tests build it by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Literal, Protocol

from services.policy.core.address import normalize_domain
from services.policy.core.antispam import AntispamRules
from services.policy.core.directory import Account, Directory

RelayMode = Literal["open", "restricted"]


class IpMatcher(Protocol):
    """Anything that can tell whether a client address belongs to it (config's IpGroup)."""

    def contains(self, ip: str) -> bool: ...


@dataclass(frozen=True)
class SecurityLimits:
    """The `security` section; 0 turns a limit off. Core defaults: everything off."""

    exempt_ip_group: IpMatcher | None = None
    max_connections_per_ip: int = 0
    max_messages_per_hour_per_ip: int = 0
    max_unknown_recipients: int = 0  # directory harvest
    block_for: timedelta = timedelta(hours=1)
    require_sender_domain_dns: bool = False
    max_recipients: int = 0
    max_failed_commands: int = 0
    max_auth_failures_per_ip: int = 0  # per FAILURE_WINDOW, across replicas
    max_message_size: int = 0
    max_received_headers: int = 0
    exempt_ip_group_name: str | None = field(default=None, compare=False)

    def exempts(self, client_ip: str | None) -> bool:
        group = self.exempt_ip_group
        return group is not None and client_ip is not None and group.contains(client_ip)


@dataclass(frozen=True)
class PolicyRules:
    local_domains: frozenset[str] = frozenset()
    relay_mode: RelayMode = "restricted"
    allowed_ip_group: IpMatcher | None = None
    # SMTP-authenticated sessions may relay (relay.smtp_auth).
    relay_for_authenticated: bool = True
    # How long a POP3 login lets its address relay; None: POP3-before-SMTP is off.
    pop3_grant: timedelta | None = None
    directory: Directory = field(default_factory=Directory)
    # Where mail for postmaster@<local domain> and <postmaster> goes (server.postmaster).
    postmaster: str = ""
    # The group's name is only for messages and logs.
    allowed_ip_group_name: str | None = field(default=None, compare=False)
    limits: SecurityLimits = field(default_factory=SecurityLimits)
    # Listeners (by name) whose logins may come without TLS: POP3 listeners the operator
    # set to `tls: none`. SMTP AUTH is never among them.
    plaintext_login_listeners: frozenset[str] = frozenset()
    antispam: AntispamRules = field(default_factory=AntispamRules)

    @classmethod
    def build(
        cls,
        local_domains: Iterable[str] = (),
        relay_mode: RelayMode = "restricted",
        allowed_ip_group: IpMatcher | None = None,
        relay_for_authenticated: bool = True,
        allowed_ip_group_name: str | None = None,
        pop3_grant: timedelta | None = None,
        accounts: Iterable[Account] = (),
        postmaster: str = "",
        limits: SecurityLimits | None = None,
        plaintext_login_listeners: Iterable[str] = (),
        antispam: AntispamRules | None = None,
    ) -> PolicyRules:
        """Normalize the local domains once so that every comparison is exact."""
        return cls(
            local_domains=frozenset(normalize_domain(d) for d in local_domains),
            relay_mode=relay_mode,
            allowed_ip_group=allowed_ip_group,
            relay_for_authenticated=relay_for_authenticated,
            pop3_grant=pop3_grant,
            directory=Directory.build(accounts),
            postmaster=postmaster,
            allowed_ip_group_name=allowed_ip_group_name,
            limits=limits or SecurityLimits(),
            plaintext_login_listeners=frozenset(plaintext_login_listeners),
            antispam=antispam or AntispamRules(),
        )

    def is_local_domain(self, domain: str) -> bool:
        return domain in self.local_domains
