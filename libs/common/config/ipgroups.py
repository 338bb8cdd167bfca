"""Named groups of IP addresses: single addresses, CIDR networks and "a-b" ranges.

Policy asks "is this client in the group?" at every connection, so a group is
kept as sorted, merged integer intervals per address family and answered with
one bisect, however many entries it has.
"""

from __future__ import annotations

import ipaddress
from bisect import bisect_right
from collections.abc import Iterable
from typing import Final

IpAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# ::ffff:0:0/96: how a dual-stack socket shows an IPv4 client.
_MAPPED_LO: Final = 0xFFFF << 32
_MAPPED_HI: Final = _MAPPED_LO + 0xFFFFFFFF

Interval = tuple[int, int]


def parse_ip_entry(entry: str) -> tuple[int, Interval]:
    """(IP version, (first, last)) of one group entry, or ValueError saying what is wrong."""
    if not isinstance(entry, str) or not entry.strip():
        raise ValueError(f"empty or non-text entry {entry!r}")
    text = entry.strip()
    if "-" in text:
        return _parse_range(text)
    if "/" in text:
        try:
            net = ipaddress.ip_network(text, strict=True)
        except ValueError as exc:
            if "host bits set" in str(exc):
                fixed = ipaddress.ip_network(text, strict=False)
                raise ValueError(f"{text!r} has host bits set; did you mean {fixed}?") from None
            raise ValueError(f"{text!r} is not a valid CIDR network") from None
        return net.version, (int(net.network_address), int(net.broadcast_address))
    try:
        addr = ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(
            f"{text!r} is not an IP address, a CIDR network or a range 'first-last'"
        ) from None
    return addr.version, (int(addr), int(addr))


def _parse_range(text: str) -> tuple[int, Interval]:
    first_text, _, last_text = (part.strip() for part in text.partition("-"))
    try:
        first = ipaddress.ip_address(first_text)
        last = ipaddress.ip_address(last_text)
    except ValueError:
        raise ValueError(f"{text!r} is not a range of two IP addresses 'first-last'") from None
    if first.version != last.version:
        raise ValueError(f"range {text!r} mixes IPv4 and IPv6")
    if int(first) > int(last):
        raise ValueError(f"range {text!r} is reversed: {first} comes after {last}")
    return first.version, (int(first), int(last))


def _merge(intervals: list[Interval]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    merged: list[list[int]] = []
    for lo, hi in sorted(intervals):
        if merged and lo <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], hi)
        else:
            merged.append([lo, hi])
    return tuple(lo for lo, _ in merged), tuple(hi for _, hi in merged)


def _inside(table: tuple[tuple[int, ...], tuple[int, ...]], value: int) -> bool:
    starts, ends = table
    index = bisect_right(starts, value) - 1
    return index >= 0 and value <= ends[index]


class IpGroup:
    """An immutable set of IPv4 and IPv6 addresses; `addr in group` works too.

    IPv6 entries inside ::ffff:0:0/96 also cover the IPv4 addresses they map,
    so a group answers the same whether a socket shows 192.0.2.1 or
    ::ffff:192.0.2.1.
    """

    __slots__ = ("_entries", "_v4", "_v6")
    _entries: tuple[str, ...]
    _v4: tuple[tuple[int, ...], tuple[int, ...]]
    _v6: tuple[tuple[int, ...], tuple[int, ...]]

    def __init__(self, entries: Iterable[str] = ()) -> None:
        kept = tuple(entries)
        v4: list[Interval] = []
        v6: list[Interval] = []
        for entry in kept:
            version, (lo, hi) = parse_ip_entry(entry)
            if version == 4:
                v4.append((lo, hi))
                continue
            v6.append((lo, hi))
            if lo <= _MAPPED_HI and hi >= _MAPPED_LO:
                v4.append((max(lo, _MAPPED_LO) - _MAPPED_LO, min(hi, _MAPPED_HI) - _MAPPED_LO))
        object.__setattr__(self, "_entries", kept)
        object.__setattr__(self, "_v4", _merge(v4))
        object.__setattr__(self, "_v6", _merge(v6))

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable")

    @property
    def entries(self) -> tuple[str, ...]:
        """The entries as written in the configuration."""
        return self._entries

    def contains(self, addr: str | IpAddress) -> bool:
        """True when addr is in the group; text that is no IP address is in no group."""
        if isinstance(addr, str):
            try:
                addr = ipaddress.ip_address(addr.strip().removeprefix("[").removesuffix("]"))
            except ValueError:
                return False
        if isinstance(addr, ipaddress.IPv4Address):
            return _inside(self._v4, int(addr))
        if isinstance(addr, ipaddress.IPv6Address):
            mapped = addr.ipv4_mapped
            if mapped is not None and _inside(self._v4, int(mapped)):
                return True
            return _inside(self._v6, int(addr))
        return False

    def __contains__(self, addr: object) -> bool:
        if isinstance(addr, str | ipaddress.IPv4Address | ipaddress.IPv6Address):
            return self.contains(addr)
        return False

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, IpGroup):
            return NotImplemented
        return (self._v4, self._v6) == (other._v4, other._v6)

    def __hash__(self) -> int:
        return hash((self._v4, self._v6))

    def __repr__(self) -> str:
        return f"IpGroup({list(self._entries)!r})"
