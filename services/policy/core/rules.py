"""The part of the configuration policy decides with, as plain frozen data.

The core never sees the YAML model: the service builds `PolicyRules` from the
Config once at start, and unit tests build it by hand.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Literal, Protocol

from services.policy.core.address import normalize_domain

RelayMode = Literal["open", "restricted"]


class IpMatcher(Protocol):
    """Anything that can tell whether a client address belongs to it (config's IpGroup)."""

    def contains(self, ip: str) -> bool: ...


@dataclass(frozen=True)
class PolicyRules:
    local_domains: frozenset[str] = frozenset()
    relay_mode: RelayMode = "restricted"
    allowed_ip_group: IpMatcher | None = None
    # SMTP-authenticated sessions may relay (relay.smtp_auth).
    relay_for_authenticated: bool = True
    # The group's name is only for messages and logs.
    allowed_ip_group_name: str | None = field(default=None, compare=False)

    @classmethod
    def build(
        cls,
        local_domains: Iterable[str] = (),
        relay_mode: RelayMode = "restricted",
        allowed_ip_group: IpMatcher | None = None,
        relay_for_authenticated: bool = True,
        allowed_ip_group_name: str | None = None,
    ) -> PolicyRules:
        """Normalize the local domains once so that every comparison is exact."""
        return cls(
            local_domains=frozenset(normalize_domain(d) for d in local_domains),
            relay_mode=relay_mode,
            allowed_ip_group=allowed_ip_group,
            relay_for_authenticated=relay_for_authenticated,
            allowed_ip_group_name=allowed_ip_group_name,
        )

    def is_local_domain(self, domain: str) -> bool:
        return domain in self.local_domains
