"""SPF (RFC 7208) with pyspf, the reference implementation, off the event loop.

pyspf is synchronous and asks DNS through its module-level `DNSLookup`
function. That function is replaced once, here, by one that answers from the
resolver of the thread running the check: each check runs in this adapter's
own bounded pool, whose threads carry the resolver of `dns.servers` /
`dns.timeout`, so SPF sees the same DNS as every other look-up of policy and
never the system's. `total_seconds` bounds one whole check (all its look-ups).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dns.exception
import dns.name
import dns.resolver
import spf

from libs.common.config.sections import DnsSection
from libs.common.contract.antispam import SpfCode, SpfResult
from libs.common.mail.dns import resolver_of
from services.policy.core.antispam import spf_identity

log = logging.getLogger(__name__)

THREADS = 4
CACHE_ENTRIES = 10_000
_RESULTS: tuple[SpfCode, ...] = (
    "pass",
    "fail",
    "softfail",
    "neutral",
    "none",
    "temperror",
    "permerror",
)

_here = threading.local()


def _lookup(name: str, qtype: str, strict: bool = True, timeout: float = 30) -> list[Any]:
    """pyspf's DNSLookup contract: [((name, qtype), value), ...]; TempError when DNS fails."""
    resolver: dns.resolver.Resolver | None = getattr(_here, "resolver", None)
    if resolver is None:
        raise spf.TempError("DNS: no resolver for this thread")
    try:
        answers = resolver.resolve(
            dns.name.from_text(name), qtype, search=False, lifetime=min(timeout, resolver.lifetime)
        )
    except (dns.resolver.NoAnswer, dns.resolver.NXDOMAIN):
        return []
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise spf.TempError(f"DNS {exc}") from None
    except dns.exception.DNSException as exc:
        raise spf.TempError(f"DNS {exc}") from None
    found: list[Any] = []
    for rdata in answers:
        if qtype in ("A", "AAAA"):
            found.append(((name, qtype), rdata.address))
        elif qtype == "MX":
            found.append(((name, qtype), (rdata.preference, rdata.exchange)))
        elif qtype == "PTR":
            found.append(((name, qtype), rdata.target.to_text(True)))
        elif qtype in ("TXT", "SPF"):
            found.append(((name, qtype), rdata.strings))
    return found


spf.DNSLookup = _lookup


def _sync_resolver(section: DnsSection) -> dns.resolver.Resolver:
    """A synchronous twin of the resolver the rest of policy uses (same servers, timeout)."""
    twin = resolver_of(section, CACHE_ENTRIES)
    resolver = dns.resolver.Resolver(configure=False)
    resolver.nameservers = twin.nameservers
    resolver.timeout = twin.timeout
    resolver.lifetime = twin.lifetime
    resolver.cache = twin.cache
    return resolver


class SpfChecker:
    def __init__(self, section: DnsSection, receiver: str, total_seconds: float) -> None:
        self._receiver = receiver
        self._total = total_seconds
        self._resolver = _sync_resolver(section)
        self._pool = ThreadPoolExecutor(
            max_workers=THREADS, thread_name_prefix="spf", initializer=self._attach
        )

    def _attach(self) -> None:
        _here.resolver = self._resolver

    async def check(self, client_ip: str, sender: str, helo: str) -> SpfResult:
        """`sender` "" for the null sender: then the HELO name is the identity checked."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._check, client_ip, sender, helo)

    def _check(self, client_ip: str, sender: str, helo: str) -> SpfResult:
        identity = "helo" if not sender else "mailfrom"
        checkable = spf_identity(sender, helo)
        if checkable is None:
            checked = sender or f"postmaster@{helo}"
            return SpfResult(
                result="none",
                identity=identity,
                sender=checked,
                domain=checked.rpartition("@")[2],
                client_ip=client_ip,
                helo=helo,
                explanation="no domain name to check",
            )
        try:
            q = spf.query(
                i=client_ip,
                s=sender,
                h=helo,
                receiver=self._receiver,
                timeout=self._total,
                querytime=self._total,
            )
            result, _code, explanation = q.check()
        except Exception as exc:
            # pyspf raises for input it cannot even start on (an odd address): no result.
            log.warning(
                "spf: %s for %s from %s: %s", type(exc).__name__, ascii(sender), client_ip, exc
            )
            result, explanation = "temperror", type(exc).__name__
        code: SpfCode = result if result in _RESULTS else "permerror"
        checked, domain = checkable
        return SpfResult(
            result=code,
            identity=identity,
            sender=checked,
            domain=domain,
            client_ip=client_ip,
            helo=helo,
            explanation=str(explanation),
        )

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
