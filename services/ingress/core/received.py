"""The trace header ingress prepends to every accepted message (RFC 5321 section 4.4).

Pure: the caller supplies the time, the queue id and what it knows of the session.
"""

from __future__ import annotations

import ipaddress
from datetime import datetime
from email.utils import format_datetime


def with_protocol(*, extended: bool, tls: bool, authenticated: bool, utf8: bool = False) -> str:
    """The `with` keyword: RFC 3848 (ESMTP, ESMTPS, ESMTPA, ESMTPSA) and RFC 6531 (UTF8SMTP*)."""
    if not extended:
        return "SMTP"
    base = "UTF8SMTP" if utf8 else "ESMTP"
    suffix = ("S" if tls else "") + ("A" if authenticated else "")
    return base + suffix


def address_literal(ip: str) -> str:
    """`[192.0.2.1]` or `[IPv6:2001:db8::1]`, the address-literal forms of RFC 5321 4.1.3."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return f"[{ip}]"
    if addr.version == 6:
        mapped = addr.ipv4_mapped
        return f"[{mapped}]" if mapped else f"[IPv6:{addr.compressed}]"
    return f"[{addr}]"


def _clean(value: str) -> str:
    """Client-supplied text must not break the header: no controls, no folding."""
    return "".join(ch if ch.isprintable() and ch not in "\r\n" else "?" for ch in value).strip()


def received_header(
    *,
    helo: str,
    client_ip: str,
    hostname: str,
    protocol: str,
    queue_id: str,
    recipients: list[str] | tuple[str, ...],
    now: datetime,
    client_name: str | None = None,
    hide_client: bool = False,
    tls: tuple[str, str] | None = None,
) -> bytes:
    """One complete header field, folded, ending in CRLF.

    `for` names the recipient only when there is exactly one: listing several
    would disclose Bcc recipients to all of them (RFC 5321 section 7.2).
    `hide_client` (relay.hide_local_ip_group) leaves out the whole `from`
    clause: the HELO name of an internal host names it as well as its address.
    `tls` (version, cipher) is recorded as Postfix does: `(using TLSv1.3 with cipher ...)`.
    """
    by = f"by {_clean(hostname)} (mailbus) with {protocol} id {queue_id}"
    if hide_client:
        lines = [f"Received: {by}"]
    else:
        name = _clean(client_name) if client_name else _clean(client_ip)
        helo_text = _clean(helo) or "unknown"
        lines = [
            f"Received: from {helo_text} ({name} {address_literal(client_ip)})",
            f"\t{by}",
        ]
    if tls is not None:
        version, cipher = (_clean(part) for part in tls)
        # Between `from` and `by`; with no `from` clause, a comment after `by`.
        using = f"\t(using {version} with cipher {cipher})"
        if hide_client:
            lines.append(using)
        else:
            lines.insert(1, using)
    stamp = format_datetime(now)
    if len(recipients) == 1:
        lines.append(f"\tfor <{_clean(recipients[0])}>; {stamp}")
    else:
        lines[-1] += ";"
        lines.append(f"\t{stamp}")
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


def count_received(message: bytes) -> int:
    """Received fields in the header section: more than a limit means a mail loop."""
    count = 0
    for line in message.split(b"\n"):
        line = line.rstrip(b"\r")
        if not line:
            break  # the blank line that ends the header section
        if line[:1] in (b" ", b"\t"):
            continue  # a continuation of the previous field
        if line[:9].lower() == b"received:":
            count += 1
    return count
