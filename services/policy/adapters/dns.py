"""Does the sender's domain exist in DNS? MX, else A or AAAA (dnspython, asynchronous).

The answer becomes a `SenderDomain` fact for the core, which alone turns it
into a reply. NXDOMAIN or no such record: "missing"; a time-out, SERVFAIL or
any other resolver failure: "temporary" (the domain may well exist); a null MX
(RFC 7505) alone: "null_mx". Each look-up may take `dns.timeout`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.name
import dns.nameserver
import dns.rdatatype
import dns.resolver

from services.policy.core import SenderDomain

log = logging.getLogger(__name__)

CACHE_ENTRIES = 10_000


class SenderDomainResolver:
    def __init__(self, servers: Sequence[tuple[str, int]], timeout: float) -> None:
        self._timeout = timeout
        self._resolver: dns.asyncresolver.Resolver | None
        try:
            resolver = dns.asyncresolver.Resolver(configure=not servers)
        except dns.resolver.NoResolverConfiguration as exc:
            log.error("dns: no system resolver (%s): sender domains cannot be checked", exc)
            self._resolver = None
            return
        if servers:
            resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in servers]
        resolver.timeout = timeout
        resolver.lifetime = timeout
        # Answers are kept for their TTL, as a local caching resolver would.
        resolver.cache = dns.resolver.LRUCache(CACHE_ENTRIES)
        self._resolver = resolver

    async def check(self, domain: str) -> SenderDomain:
        if self._resolver is None:
            return SenderDomain(domain, "temporary", "no resolver")
        name = dns.name.from_text(domain)
        mx = await self._query(name, "MX")
        if isinstance(mx, dns.resolver.Answer):
            exchanges = {r.exchange for r in mx if r.rdtype == dns.rdatatype.MX}
            if exchanges == {dns.name.root}:
                return SenderDomain(domain, "null_mx", "null MX")
            return SenderDomain(domain, "found", "MX")
        if mx != "NOANSWER":
            return SenderDomain(domain, "missing" if mx == "NXDOMAIN" else "temporary", mx)
        a, aaaa = await asyncio.gather(self._query(name, "A"), self._query(name, "AAAA"))
        if isinstance(a, dns.resolver.Answer) or isinstance(aaaa, dns.resolver.Answer):
            return SenderDomain(
                domain, "found", "A" if isinstance(a, dns.resolver.Answer) else "AAAA"
            )
        failed = [r for r in (a, aaaa) if r not in ("NOANSWER", "NXDOMAIN")]
        if failed:
            return SenderDomain(domain, "temporary", str(failed[0]))
        return SenderDomain(domain, "missing", "no MX, A or AAAA record")

    async def _query(self, name: dns.name.Name, rdtype: str) -> dns.resolver.Answer | str:
        """The answer, or why there is none: NXDOMAIN, NOANSWER, timeout, SERVFAIL, ..."""
        assert self._resolver is not None
        try:
            return await self._resolver.resolve(name, rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            return "NXDOMAIN"
        except dns.resolver.NoAnswer:
            return "NOANSWER"
        except dns.exception.Timeout:
            return "timeout"
        except dns.resolver.NoNameservers:
            return "SERVFAIL"
        except dns.exception.DNSException as exc:
            return type(exc).__name__
