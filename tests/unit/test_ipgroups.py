"""IP groups: addresses, networks and ranges of both families."""

from __future__ import annotations

import ipaddress

import pytest

from libs.common.config import IpGroup
from libs.common.config.ipgroups import parse_ip_entry

GROUP = IpGroup(
    [
        "127.0.0.0/8",
        "192.0.2.25",
        "198.51.100.10-198.51.100.20",
        "::1",
        "2001:db8::/32",
        "2001:db9::5 - 2001:db9::9",
    ]
)


@pytest.mark.parametrize(
    ("addr", "inside"),
    [
        ("127.0.0.1", True),
        ("127.255.255.255", True),  # last of the network
        ("128.0.0.0", False),  # first after it
        ("126.255.255.255", False),
        ("192.0.2.25", True),
        ("192.0.2.24", False),
        ("192.0.2.26", False),
        ("198.51.100.10", True),  # range ends are included
        ("198.51.100.15", True),
        ("198.51.100.20", True),
        ("198.51.100.9", False),
        ("198.51.100.21", False),
        ("::1", True),
        ("::2", False),
        ("2001:db8::", True),
        ("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff", True),
        ("2001:db9::", False),
        ("2001:db9::5", True),
        ("2001:db9::9", True),
        ("2001:db9::a", False),
        ("2001:DB8::1", True),
        ("[2001:db8::1]", True),
        ("fe80::1%eth0", False),
        ("::ffff:127.0.0.1", True),  # an IPv4 client on a dual-stack socket
        ("::ffff:192.0.2.25", True),
        ("::ffff:192.0.2.26", False),
        ("0.0.0.0", False),
        ("255.255.255.255", False),
        ("not an address", False),
        ("", False),
        ("127.0.0.1/8", False),
    ],
)
def test_contains(addr: str, inside: bool) -> None:
    assert GROUP.contains(addr) is inside
    assert (addr in GROUP) is inside


def test_contains_takes_address_objects() -> None:
    assert GROUP.contains(ipaddress.IPv4Address("127.0.0.9"))
    assert GROUP.contains(ipaddress.IPv6Address("2001:db8::9"))
    assert GROUP.contains(ipaddress.IPv6Address("::ffff:127.0.0.9"))
    assert not GROUP.contains(ipaddress.IPv4Address("10.0.0.1"))
    assert 12345 not in GROUP


def test_mapped_ipv6_entries_cover_ipv4_clients() -> None:
    group = IpGroup(["::ffff:10.0.0.0/104"])
    assert group.contains("10.1.2.3")
    assert group.contains("::ffff:10.1.2.3")
    assert not group.contains("11.0.0.1")


def test_ipv4_entries_do_not_cover_plain_ipv6() -> None:
    group = IpGroup(["0.0.0.0/0"])
    assert group.contains("203.0.113.7")
    assert not group.contains("2001:db8::1")
    assert IpGroup(["::/0"]).contains("2001:db8::1")


def test_empty_group_contains_nothing() -> None:
    assert not IpGroup([]).contains("127.0.0.1")
    assert not IpGroup().contains("::1")


def test_overlapping_and_adjacent_entries_merge() -> None:
    group = IpGroup(["10.0.0.0/24", "10.0.1.0/24", "10.0.0.128-10.0.2.5", "10.0.0.7"])
    assert group == IpGroup(["10.0.0.0-10.0.2.5"])
    assert group.contains("10.0.2.5")
    assert not group.contains("10.0.2.6")
    assert group.entries[0] == "10.0.0.0/24"


def test_group_is_immutable_and_hashable() -> None:
    group = IpGroup(["10.0.0.0/8"])
    with pytest.raises(AttributeError):
        group._v4 = ((), ())
    assert hash(group) == hash(IpGroup(["10.0.0.0/8"]))
    assert repr(group) == "IpGroup(['10.0.0.0/8'])"


def test_many_entries() -> None:
    group = IpGroup(f"10.{i // 256}.{i % 256}.1" for i in range(0, 20000, 2))
    assert group.contains("10.0.0.1")
    assert not group.contains("10.0.1.1")
    assert group.contains("10.78.30.1")
    assert not group.contains("10.78.32.1")


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("300.1.1.1", "not an IP address"),
        ("", "empty"),
        ("10.0.0.1/8", "host bits set; did you mean 10.0.0.0/8"),
        ("10.0.0.0/33", "not a valid CIDR network"),
        ("10.0.0.9-10.0.0.1", "reversed"),
        ("2001:db8::9-2001:db8::1", "reversed"),
        ("10.0.0.1-::1", "mixes IPv4 and IPv6"),
        ("10.0.0.1-", "not a range"),
        ("10.0.0.1-10.0.0.x", "not a range"),
        ("010.0.0.1", "not an IP address"),
    ],
)
def test_bad_entries(entry: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_ip_entry(entry)
    with pytest.raises(ValueError, match=message):
        IpGroup(["127.0.0.1", entry])


def test_single_address_range_is_allowed() -> None:
    assert parse_ip_entry("10.0.0.1-10.0.0.1") == (4, (167772161, 167772161))
