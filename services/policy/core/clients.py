"""The client address as one canonical string: the key of grants, counters and groups."""

from __future__ import annotations

import ipaddress


def canonical_ip(text: str) -> str | None:
    """Compressed form, brackets and zone dropped; an IPv4-mapped IPv6 address counts as IPv4.

    Without this, `::ffff:192.0.2.1` and `192.0.2.1` would hold separate grants and
    separate failure counts for the same client.
    """
    try:
        ip = ipaddress.ip_address(text.strip().strip("[]").split("%")[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
