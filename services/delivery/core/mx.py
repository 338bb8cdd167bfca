"""Where a job goes: MX ordering (RFC 5321 section 5.1, RFC 7505) and the addresses to try.

Pure: the adapter asks DNS and passes the answers in, with its random source.

- MX hosts by preference, lowest first; equal preferences in random order, so
  load spreads as the domain's owner intended;
- no MX records: the domain itself is the only host (the implicit MX), but
  only then: never fall back to A records when MX records exist;
- a null MX (a single MX of "."): the domain accepts no mail, a permanent 5.1.10;
- each address of a host (A, then AAAA) is tried in turn, up to ADDRESS_LIMIT
  addresses over all hosts; a connection that fails before the transaction
  moves on to the next address.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from services.delivery.core.replies import Reply
from services.delivery.core.transaction import Transcript

# Addresses tried per attempt, over all MX hosts (Postfix's smtp_mx_address_limit).
# At least two: one dead host must not defer mail that a second one would take.
ADDRESS_LIMIT = 5

NULL_MX_STATUS = "5.1.10"  # RFC 7505: recipient address has null MX
NO_DOMAIN_STATUS = "5.1.2"  # bad destination system address
NO_ADDRESS_STATUS = "5.4.4"  # unable to route: the domain has neither MX nor address
DNS_TEMPFAIL_STATUS = "4.4.3"  # directory server failure
HOST_NOT_FOUND_STATUS = "4.4.4"  # unable to route (for now): no MX host has an address

DnsProblem = Literal["nxdomain", "nodata", "tempfail"]


@dataclass(frozen=True)
class MxRecord:
    preference: int
    host: str  # without the trailing dot; "" for the null MX's "."


@dataclass(frozen=True)
class Endpoint:
    """One address to connect to, with the name it was found under (for the logs)."""

    name: str
    ip: str
    port: int

    @property
    def label(self) -> str:
        return self.ip if self.name in ("", self.ip) else f"{self.name}[{self.ip}]"


@dataclass(frozen=True)
class Route:
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class NoRoute:
    """No address to try: the reply stands for every recipient (5xx fails, 4xx defers)."""

    reply: Reply


def host_name(text: str) -> str:
    return text.rstrip(".").lower()


def is_null_mx(records: Sequence[MxRecord]) -> bool:
    return len(records) == 1 and records[0].host == ""


def order_mx(records: Iterable[MxRecord], rng: random.Random | None = None) -> list[str]:
    """Host names by preference, shuffled within a preference, each once."""
    rng = rng or random.Random()
    groups: dict[int, list[str]] = {}
    for record in records:
        if record.host:  # a "." among real MX records is a misconfiguration: skip it
            groups.setdefault(record.preference, []).append(record.host)
    ordered: list[str] = []
    for preference in sorted(groups):
        hosts = groups[preference]
        rng.shuffle(hosts)
        ordered.extend(h for h in hosts if h not in ordered)
    return ordered


def endpoints(
    hosts: Sequence[tuple[str, Sequence[str]]], port: int, limit: int = ADDRESS_LIMIT
) -> tuple[Endpoint, ...]:
    """Every address of every host, in order, the same address once, at most `limit`."""
    out: list[Endpoint] = []
    seen: set[str] = set()
    for name, addresses in hosts:
        for ip in addresses:
            if ip not in seen and len(out) < limit:
                seen.add(ip)
                out.append(Endpoint(name, ip, port))
    return tuple(out)


def mx_problem(domain: str, problem: DnsProblem, detail: str = "") -> NoRoute:
    """The MX look-up itself failed."""
    why = f" ({detail})" if detail else ""
    if problem == "nxdomain":
        return NoRoute(Reply(0, f"domain {domain} does not exist{why}", NO_DOMAIN_STATUS))
    if problem == "nodata":
        return NoRoute(Reply(0, f"{domain} has no MX and no address record", NO_ADDRESS_STATUS))
    return NoRoute(Reply(0, f"DNS look-up of {domain} failed{why}", DNS_TEMPFAIL_STATUS))


def null_mx(domain: str) -> NoRoute:
    return NoRoute(Reply(0, f"{domain} does not accept mail (null MX, RFC 7505)", NULL_MX_STATUS))


def no_addresses(domain: str, hosts: Sequence[str], tempfail: bool) -> NoRoute:
    """MX hosts exist but none resolved to an address: retry later either way."""
    names = ", ".join(hosts) or domain
    if tempfail:
        return NoRoute(Reply(0, f"address look-up for {names} failed", DNS_TEMPFAIL_STATUS))
    return NoRoute(
        Reply(0, f"no address for the MX hosts of {domain}: {names}", HOST_NOT_FOUND_STATUS)
    )


def try_next_address(transcript: Transcript) -> bool:
    """Move on to the next address when this one never got to the transaction
    (no connection, greeting or TLS refused, ...) or answered MAIL with a 4xx.

    Once recipients were answered, the server took responsibility for this attempt;
    a 5xx to MAIL is the domain's answer, not the host's."""
    mail = transcript.mail
    if mail is None:
        return True
    return mail.outcome == "deferred" and not transcript.rcpts
