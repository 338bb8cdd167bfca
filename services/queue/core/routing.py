"""Where each recipient goes: the relay host, its domain's MX hosts, or a local mailbox.

Recipients are grouped so that one job (one SMTP transaction) carries every
recipient that shares a destination, in the order they first appear; that
order is what makes job ids reproducible from the same MessageReceived.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

from libs.common.contract.events import Destination

DeliveryMode = Literal["relay", "mx"]


@dataclass(frozen=True)
class Routing:
    mode: DeliveryMode
    local_domains: frozenset[str] = frozenset()

    @classmethod
    def of(cls, mode: str, local_domains: Iterable[str]) -> Routing:
        if mode not in ("relay", "mx"):
            raise ValueError(f"delivery.mode: unknown mode {mode!r}")
        wanted: DeliveryMode = "relay" if mode == "relay" else "mx"
        return cls(wanted, frozenset(d.lower().rstrip(".") for d in local_domains))

    def is_local(self, domain: str) -> bool:
        return domain in self.local_domains


def domain_of(address: str) -> str:
    """The lower-cased domain; a bare local part (RFC 5321 `postmaster`) has none."""
    _, at, domain = address.rpartition("@")
    return domain.lower().rstrip(".") if at else ""


def destination_for(address: str, routing: Routing) -> Destination:
    domain = domain_of(address)
    if not domain or routing.is_local(domain):
        return Destination(kind="local", domain=domain)
    if routing.mode == "relay":
        return Destination(kind="relay")
    return Destination(kind="mx", domain=domain)


def group_by_destination(
    addresses: Iterable[str], routing: Routing
) -> list[tuple[Destination, tuple[str, ...]]]:
    groups: dict[Destination, list[str]] = {}
    for address in addresses:
        groups.setdefault(destination_for(address, routing), []).append(address)
    return [(dest, tuple(members)) for dest, members in groups.items()]
