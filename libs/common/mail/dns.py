"""The resolver of `dns.servers` / `dns.timeout`, and look-ups that fail in three kinds.

`dns.servers` empty means the system's resolvers; otherwise only those (tests
point it at a DNS server on loopback). `dns.timeout` bounds each look-up. What a
failure means (defer, refuse, try the next host) is each service's decision; the
kinds here are only what DNS said.
"""

from __future__ import annotations

from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.resolver

from libs.common.config.sections import DnsSection
from libs.common.contract.errors import MailbusError

Resolver = dns.asyncresolver.Resolver


class LookupFailed(MailbusError):
    """No answer to a look-up; the subclass says why."""


class NoDomain(LookupFailed):
    """NXDOMAIN: the name does not exist."""


class NoData(LookupFailed):
    """The name exists but has no record of the type asked for."""


class TempFail(LookupFailed):
    """A time-out, SERVFAIL or REFUSED from every server, or another resolver failure:
    the answer may well exist."""


def make_resolver(
    servers: Sequence[tuple[str, int]], timeout: float, cache_entries: int = 0
) -> Resolver:
    """Raises dns.resolver.NoResolverConfiguration when `servers` is empty and the
    system has no resolver configured."""
    resolver = Resolver(configure=not servers)
    if servers:
        resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in servers]
    resolver.timeout = timeout
    resolver.lifetime = timeout
    if cache_entries:
        # Answers are kept for their TTL, as a local caching resolver would.
        resolver.cache = dns.resolver.LRUCache(cache_entries)
    return resolver


def resolver_of(section: DnsSection, cache_entries: int = 0) -> Resolver:
    servers = [(s.host, s.port) for s in section.servers]
    return make_resolver(servers, section.timeout.total_seconds(), cache_entries)


async def lookup(resolver: Resolver, name: str, rdtype: str) -> dns.resolver.Answer:
    """The records of type `rdtype` at `name` (always absolute: no search list)."""
    try:
        return await resolver.resolve(dns.name.from_text(name), rdtype, search=False)
    except dns.resolver.NXDOMAIN:
        raise NoDomain(f"{rdtype} {name}: no such domain") from None
    except dns.resolver.NoAnswer:
        raise NoData(f"{rdtype} {name}: no {rdtype} record") from None
    except dns.resolver.NoNameservers as exc:  # SERVFAIL or REFUSED from every server
        raise TempFail(f"{rdtype} {name}: no server could answer ({exc})") from None
    except dns.exception.Timeout:
        raise TempFail(f"{rdtype} {name}: timed out") from None
    except dns.exception.DNSException as exc:
        raise TempFail(f"{rdtype} {name}: {exc}") from None
