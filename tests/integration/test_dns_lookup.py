"""libs/common/mail/dns.py against a real DNS server on loopback: answers and the three failures."""

from __future__ import annotations

import pytest

from libs.common.mail.dns import LookupFailed, NoData, NoDomain, TempFail, lookup, make_resolver
from tests.support.dns import DnsServer


@pytest.mark.parametrize(
    ("name", "rdtype", "failure"),
    [
        ("mx.test", "MX", None),
        ("mx.test", "AAAA", NoData),
        ("absent.test", "A", NoDomain),
        ("broken.test", "A", TempFail),
        ("slow.test", "A", TempFail),
    ],
)
async def test_lookup_kinds(name: str, rdtype: str, failure: type[LookupFailed] | None) -> None:
    server = DnsServer()
    server.add("mx.test", "MX", "10 mail.mx.test.")
    server.servfail("broken.test")
    server.timeout("slow.test")
    with server:
        resolver = make_resolver([server.address], timeout=0.5, cache_entries=10)
        if failure is None:
            answer = await lookup(resolver, name, rdtype)
            assert [r.to_text() for r in answer] == ["10 mail.mx.test."]
        else:
            with pytest.raises(failure):
                await lookup(resolver, name, rdtype)
