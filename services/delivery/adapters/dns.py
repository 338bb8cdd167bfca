"""MX and address look-ups (libs.common.mail.dns), turned into a `Route`.

A time-out or SERVFAIL is a temporary failure (the mail is deferred), NXDOMAIN
and a null MX are permanent. Which hosts and addresses, in which order, is
decided in `services.delivery.core.mx`.
"""

from __future__ import annotations

import ipaddress
import logging
import random

from libs.common.mail.dns import NoData, NoDomain, Resolver, TempFail, lookup
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


class MxResolver:
    def __init__(self, resolver: Resolver, rng: random.Random | None = None) -> None:
        self._resolver = resolver
        self._rng = rng or random.Random()

    async def _query(self, name: str, rdtype: str) -> list[str]:
        return [rr.to_text() for rr in await lookup(self._resolver, name, rdtype)]

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
