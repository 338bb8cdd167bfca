"""MX and address look-ups with dnspython's asyncio resolver, turned into a `Route`.

`dns.servers` empty means the system's resolvers; otherwise only those (tests
point it at a DNS server on loopback). `dns.timeout` bounds each look-up; a
time-out or SERVFAIL is a temporary failure (the mail is deferred), NXDOMAIN
and a null MX are permanent. Which hosts and addresses, in which order, is
decided in `services.delivery.core.mx`.
"""

from __future__ import annotations

import ipaddress
import logging
import random
from collections.abc import Sequence

import dns.asyncresolver
import dns.exception
import dns.nameserver
import dns.rdatatype
import dns.resolver

from services.delivery.core.mx import (
    ADDRESS_LIMIT,
    MxRecord,
    NoRoute,
    Route,
    endpoints,
    host_name,
    is_null_mx,
    mx_problem,
    no_addresses,
    null_mx,
    order_mx,
)

log = logging.getLogger(__name__)


class TempFail(Exception):
    pass


class NoData(Exception):
    pass


class NoDomain(Exception):
    pass


class MxResolver:
    def __init__(
        self,
        servers: Sequence[tuple[str, int]],
        timeout: float,
        rng: random.Random | None = None,
    ) -> None:
        if servers:
            resolver = dns.asyncresolver.Resolver(configure=False)
            resolver.nameservers = [dns.nameserver.Do53Nameserver(h, p) for h, p in servers]
        else:
            resolver = dns.asyncresolver.Resolver()
        resolver.lifetime = timeout
        resolver.timeout = timeout
        self._resolver = resolver
        self._rng = rng or random.Random()

    async def _query(self, name: str, rdtype: str) -> list[str]:
        try:
            answer = await self._resolver.resolve(name + ".", rdtype, search=False)
        except dns.resolver.NXDOMAIN:
            raise NoDomain(name) from None
        except dns.resolver.NoAnswer:
            raise NoData(name) from None
        except dns.resolver.NoNameservers as exc:  # SERVFAIL or REFUSED from every server
            raise TempFail(f"{rdtype} {name}: no server could answer ({exc})") from None
        except dns.exception.Timeout:
            raise TempFail(f"{rdtype} {name}: timed out") from None
        except dns.exception.DNSException as exc:
            raise TempFail(f"{rdtype} {name}: {exc}") from None
        return [rr.to_text() for rr in answer]

    async def _mx(self, domain: str) -> list[MxRecord]:
        records = []
        for text in await self._query(domain, "MX"):
            preference, _, exchange = text.partition(" ")
            records.append(MxRecord(int(preference), host_name(exchange)))
        return records

    async def addresses(self, host: str) -> tuple[list[str], bool]:
        """A then AAAA addresses of `host`, and whether a look-up failed temporarily."""
        found: list[str] = []
        tempfail = False
        for rdtype in ("A", "AAAA"):
            try:
                found.extend(await self._query(host, rdtype))
            except (NoDomain, NoData):
                continue
            except TempFail as exc:
                log.info("dns: %s", exc)
                tempfail = True
        return found, tempfail

    async def route(self, domain: str, port: int) -> Route | NoRoute:
        domain = host_name(domain)
        if _is_ip(domain):
            return Route(endpoints([(domain, [domain])], port))
        try:
            records = await self._mx(domain)
        except NoDomain:
            return mx_problem(domain, "nxdomain")
        except TempFail as exc:
            return mx_problem(domain, "tempfail", str(exc))
        except NoData:
            records = []
        if is_null_mx(records):
            return null_mx(domain)
        implicit = not records
        hosts = [domain] if implicit else order_mx(records, self._rng)
        resolved: list[tuple[str, list[str]]] = []
        tempfail = False
        for host in hosts:
            addresses, failed = await self.addresses(host)
            tempfail = tempfail or failed
            resolved.append((host, addresses))
            if sum(len(a) for _, a in resolved) >= ADDRESS_LIMIT:
                break
        found = endpoints(resolved, port)
        if found:
            return Route(found)
        if implicit and not tempfail:
            return mx_problem(domain, "nodata")
        return no_addresses(domain, hosts, tempfail)


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return False
    return True
