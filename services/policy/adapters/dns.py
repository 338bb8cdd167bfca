"""Does the sender's domain exist in DNS? MX, else A or AAAA (dnspython, asynchronous).

The answer becomes a `SenderDomain` fact for the core, which alone turns it
into a reply. NXDOMAIN or no such record: "missing"; a time-out, SERVFAIL or
any other resolver failure: "temporary" (the domain may well exist); a null MX
(RFC 7505) alone: "null_mx". Each look-up may take `dns.timeout`.
"""

from __future__ import annotations

import asyncio
import logging

import dns.name
import dns.rdatatype
import dns.resolver

from libs.common.config.sections import DnsSection
from libs.common.mail.dns import (
    LookupFailed,
    NoData,
    NoDomain,
    Resolver,
    TempFail,
    lookup,
    resolver_of,
)
from services.policy.core import SenderDomain

log = logging.getLogger(__name__)

CACHE_ENTRIES = 10_000


def sender_domain_resolver(section: DnsSection) -> SenderDomainResolver:
    try:
        resolver = resolver_of(section, CACHE_ENTRIES)
    except dns.resolver.NoResolverConfiguration as exc:
        # Mail is then deferred (451) rather than the whole of policy failing to start.
        log.error("dns: no system resolver (%s): sender domains cannot be checked", exc)
        return SenderDomainResolver(None)
    return SenderDomainResolver(resolver)


class SenderDomainResolver:
    """`resolver` None: no resolver could be configured, so every check is temporary."""

    def __init__(self, resolver: Resolver | None) -> None:
        self._resolver = resolver

    async def check(self, domain: str) -> SenderDomain:
        if self._resolver is None:
            return SenderDomain(domain, "temporary", "no resolver")
        mx = await self._query(domain, "MX")
        if isinstance(mx, dns.resolver.Answer):
            exchanges = {r.exchange for r in mx if r.rdtype == dns.rdatatype.MX}
            if exchanges == {dns.name.root}:
                return SenderDomain(domain, "null_mx", "null MX")
            return SenderDomain(domain, "found", "MX")
        if not isinstance(mx, NoData):
            return SenderDomain(
                domain, "missing" if isinstance(mx, NoDomain) else "temporary", str(mx)
            )
        a, aaaa = await asyncio.gather(self._query(domain, "A"), self._query(domain, "AAAA"))
        if isinstance(a, dns.resolver.Answer) or isinstance(aaaa, dns.resolver.Answer):
            return SenderDomain(
                domain, "found", "A" if isinstance(a, dns.resolver.Answer) else "AAAA"
            )
        failed = [r for r in (a, aaaa) if isinstance(r, TempFail)]
        if failed:
            return SenderDomain(domain, "temporary", str(failed[0]))
        return SenderDomain(domain, "missing", "no MX, A or AAAA record")

    async def _query(self, domain: str, rdtype: str) -> dns.resolver.Answer | LookupFailed:
        assert self._resolver is not None
        try:
            return await lookup(self._resolver, domain, rdtype)
        except LookupFailed as exc:
            return exc
