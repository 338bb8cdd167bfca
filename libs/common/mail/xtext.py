"""xtext (RFC 3461 section 4) and the utf-8 address form of RFC 6533, both directions.

ENVID and ORCPT travel in ESMTP parameters, where space, `+` and `=` cannot
appear as such. The decoded values end up in delivery reports, so decoding
refuses anything but printable US-ASCII: an encoded CR LF must never become a
line break in a report. The RFC 6533 form (`ORCPT=utf-8;...`) adds `\\x{HEX}`
escapes and, in an SMTPUTF8 session, raw UTF-8.
"""

from __future__ import annotations

import re

from libs.common.contract.errors import MailbusError

_HEX = "0123456789ABCDEFabcdef"
_EMBEDDED = re.compile(r"\\x\{([0-9A-Fa-f]{1,6})\}")


class XtextError(MailbusError, ValueError):
    """The text is not valid xtext, or decodes to something a report cannot carry."""


def _is_xchar(c: str) -> bool:
    return "!" <= c <= "~" and c not in "+="


def _printable(c: str) -> bool:
    return " " <= c <= "~"


def decode(text: str) -> str:
    """`+XX` to the character it stands for. Lower-case hex digits are accepted too,
    though RFC 3461 writes them upper-case: being strict there helps nobody."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "+":
            digits = text[i + 1 : i + 3]
            if len(digits) != 2 or any(d not in _HEX for d in digits):
                raise XtextError(f"'+' must be followed by two hex digits at position {i + 1}")
            decoded = chr(int(digits, 16))
            if not _printable(decoded):
                raise XtextError(f"+{digits} is not a printable US-ASCII character")
            out.append(decoded)
            i += 3
            continue
        if not _is_xchar(c):
            raise XtextError(f"character {c!r} is not allowed in xtext; encode it as +XX")
        out.append(c)
        i += 1
    return "".join(out)


def encode(text: str) -> str:
    """The inverse of `decode`; anything else than xchars becomes `+XX` (of its UTF-8)."""
    return "".join(c if _is_xchar(c) else "".join(f"+{b:02X}" for b in c.encode()) for c in text)


def _is_qchar(c: str) -> bool:
    # RFC 6533 section 3: printable ASCII except space, "+", "=" and "\".
    return "!" <= c <= "~" and c not in "+=\\"


def decode_utf8_address(text: str) -> str:
    """utf-8-addr-xtext / utf-8-addr-unitext (RFC 6533 section 3) to the address."""
    out: list[str] = []
    i = 0
    while i < len(text):
        c = text[i]
        if c == "\\":
            found = _EMBEDDED.match(text, i)
            if found is None:
                raise XtextError(f"'\\' must start an escape like \\x{{E9}} at position {i + 1}")
            point = int(found.group(1), 16)
            if point > 0x10FFFF or 0xD800 <= point <= 0xDFFF:
                raise XtextError(f"\\x{{{found.group(1)}}} is not a Unicode character")
            decoded = chr(point)
            if not decoded.isprintable():
                raise XtextError(f"\\x{{{found.group(1)}}} is not a printable character")
            out.append(decoded)
            i = found.end()
            continue
        # Lone surrogates are bytes that were not UTF-8 (aiosmtpd's surrogateescape).
        if _is_qchar(c) or (c > "\x7f" and c.isprintable() and not _surrogate(c)):
            out.append(c)
            i += 1
            continue
        raise XtextError(f"character {c!r} is not allowed here; write it as \\x{{HEX}}")
    return "".join(out)


def _surrogate(c: str) -> bool:
    return "\ud800" <= c <= "\udfff"


def encode_utf8_address(address: str) -> str:
    """ASCII-only utf-8-addr-xtext: fit for any session, SMTPUTF8 or not."""
    return "".join(c if _is_qchar(c) else f"\\x{{{ord(c):X}}}" for c in address)


def decode_orcpt(value: str) -> str:
    """`rfc822;bob+2Bextra@example.test` -> `rfc822;bob+extra@example.test`.

    RFC 3461 section 4.2 does not hold the address to the syntax of its type,
    so only the encoding is checked; the type is kept as the client wrote it.
    """
    kind, sep, encoded = value.partition(";")
    if not sep or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.+_-]*", kind):
        raise XtextError("ORCPT must be <address-type>;<address>, e.g. rfc822;bob@example.test")
    if not encoded:
        raise XtextError("ORCPT has no address after the ';'")
    if kind.lower() == "utf-8":
        return f"{kind};{decode_utf8_address(encoded)}"
    return f"{kind};{decode(encoded)}"


def encode_orcpt(orcpt: str) -> str:
    """An ORCPT as the events hold it (`type;address`, decoded) back into its parameter
    value. A bare or non-ASCII address gets the type it needs."""
    kind, sep, address = orcpt.partition(";")
    if not sep:
        kind, address = "rfc822", orcpt
    if kind.lower() == "utf-8" or not address.isascii():
        return f"utf-8;{encode_utf8_address(address)}"
    return f"{kind};{encode(address)}"
