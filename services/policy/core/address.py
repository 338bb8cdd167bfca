"""What an envelope address really names, parsed the way a relay check needs it.

A relay check is only as good as its parser: if policy reads
`user%remote.test@example.test` as a local mailbox while a later hop forwards
it to remote.test, the server is an open relay. So this module keeps every
part that can carry routing (source route, quoted local part, `%` and `!`)
visible, and `routing_trick` names them so the caller can refuse them.

Pure: no DNS, no I/O. RFC 5321 section 4.1.2 syntax, with RFC 6531 UTF-8 allowed in
local parts and domains.
"""

from __future__ import annotations

import ipaddress
import string
from dataclasses import dataclass

import idna

from libs.common.contract import replies
from libs.common.contract.replies import SmtpReply
from services.policy.core.errors import AddressError

MAX_LOCAL_OCTETS = 64
MAX_DOMAIN_OCTETS = 253
MAX_LABEL_OCTETS = 63

# RFC 5322 atext; any non-ASCII character is also atext under RFC 6531.
_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
_LABEL_CHARS = frozenset(string.ascii_lowercase + string.digits + "-")


@dataclass(frozen=True)
class Mailbox:
    local: str  # unquoted; case preserved (local parts are case-sensitive on the wire)
    domain: str  # normalized (see normalize_domain); "" only for the bare <postmaster>
    literal: bool = False  # domain is an address literal such as [192.0.2.1]
    route: tuple[str, ...] = ()  # obsolete source route hops, normalized
    quoted: bool = False

    @property
    def address(self) -> str:
        """The canonical form: the local part quoted only when it has to be."""
        local = _quote_local(self.local) if _needs_quotes(self.local) else self.local
        return f"{local}@{self.domain}" if self.domain else local


@dataclass(frozen=True)
class RoutingTrick:
    """A recipient whose local part or route could make a later hop relay it elsewhere."""

    rule: str
    reply: SmtpReply


def parse_path(text: str) -> Mailbox | None:
    """Parse `<local@domain>` (brackets optional); None is the null path `<>`."""
    s = text.strip()
    if s.startswith("<") or s.endswith(">"):
        if not (s.startswith("<") and s.endswith(">") and len(s) >= 2):
            raise AddressError("unbalanced angle brackets")
        s = s[1:-1]
    if s == "":
        return None
    if any(ord(c) < 0x20 or c == "\x7f" for c in s):
        raise AddressError("control characters in the address")
    route: tuple[str, ...] = ()
    if s.startswith("@"):
        route, s = _split_route(s)
    local, quoted, rest = _split_local(s)
    if rest is None:
        if not route and local.lower() == "postmaster" and not quoted:
            # RFC 5321 4.5.1: <postmaster> without a domain must be accepted.
            return Mailbox(local=local, domain="")
        raise AddressError("the address has no domain")
    domain, literal = _parse_domain(rest)
    return Mailbox(local=local, domain=domain, literal=literal, route=route, quoted=quoted)


def routing_trick(mailbox: Mailbox) -> RoutingTrick | None:
    """Name the sender-specified routing in a recipient, if any (Postfix's untrusted routing)."""
    if mailbox.route:
        return RoutingTrick("source_route", replies.SOURCE_ROUTE)
    if "@" in mailbox.local:
        return RoutingTrick("nested_address", replies.NESTED_ADDRESS)
    if "%" in mailbox.local:
        return RoutingTrick("percent_hack", replies.PERCENT_HACK)
    if "!" in mailbox.local:
        return RoutingTrick("bang_path", replies.BANG_PATH)
    return None


def normalize_domain(domain: str) -> str:
    """Lower case, one trailing root dot dropped, IDNs as A-labels: the form to compare."""
    name, _ = _parse_domain(domain)
    return name


def _split_route(s: str) -> tuple[tuple[str, ...], str]:
    """`@a,@b:rest` -> (("a", "b"), "rest")."""
    hops: list[str] = []
    i = 0
    while True:
        if i >= len(s) or s[i] != "@":
            raise AddressError("malformed source route")
        end = i + 1
        depth = 0
        while end < len(s) and (depth or s[end] not in ",:"):
            depth += {"[": 1, "]": -1}.get(s[end], 0)
            end += 1
        if end >= len(s):
            raise AddressError("source route without ':'")
        hops.append(_parse_domain(s[i + 1 : end])[0])
        if s[end] == ":":
            return tuple(hops), s[end + 1 :]
        i = end + 1


def _split_local(s: str) -> tuple[str, bool, str | None]:
    """Split off the local part; returns (local, quoted, text after '@' or None)."""
    if s.startswith('"'):
        chars: list[str] = []
        i = 1
        while i < len(s):
            c = s[i]
            if c == "\\":
                if i + 1 >= len(s):
                    raise AddressError("dangling backslash in quoted local part")
                chars.append(s[i + 1])
                i += 2
                continue
            if c == '"':
                break
            chars.append(c)
            i += 1
        else:
            raise AddressError("unterminated quoted local part")
        local = "".join(chars)
        after = s[i + 1 :]
        if after and not after.startswith("@"):
            raise AddressError("text after the quoted local part")
        _check_length(local, quoted=True)
        return local, True, after[1:] if after else None
    at = s.find("@")
    local = s if at < 0 else s[:at]
    _check_dot_atom(local)
    return local, False, None if at < 0 else s[at + 1 :]


def _check_dot_atom(local: str) -> None:
    if local == "":
        raise AddressError("empty local part")
    for atom in local.split("."):
        if atom == "":
            raise AddressError("empty atom in the local part (leading, trailing or double dot)")
        bad = [c for c in atom if c not in _ATEXT and ord(c) < 0x80]
        if bad:
            raise AddressError(f"character {bad[0]!r} not allowed in an unquoted local part")
    _check_length(local, quoted=False)


def _check_length(local: str, quoted: bool) -> None:
    if quoted and local == "":
        raise AddressError("empty local part")
    if len(local.encode()) > MAX_LOCAL_OCTETS:
        raise AddressError(f"local part longer than {MAX_LOCAL_OCTETS} octets")


def _parse_domain(text: str) -> tuple[str, bool]:
    if text.startswith("["):
        return _parse_literal(text), True
    name = text[:-1] if text.endswith(".") else text
    if name == "":
        raise AddressError("empty domain")
    name = name.lower()
    if not name.isascii():
        try:
            # IDNA 2008 (UTS 46): the stdlib codec (IDNA 2003) turns faß.de into fass.de.
            name = idna.encode(name, uts46=True).decode("ascii")
        except UnicodeError as exc:
            raise AddressError(f"invalid internationalized domain ({exc})") from None
    if len(name) > MAX_DOMAIN_OCTETS:
        raise AddressError(f"domain longer than {MAX_DOMAIN_OCTETS} octets")
    for label in name.split("."):
        if label == "":
            raise AddressError("empty label in the domain")
        if len(label) > MAX_LABEL_OCTETS:
            raise AddressError(f"domain label longer than {MAX_LABEL_OCTETS} octets")
        if not set(label) <= _LABEL_CHARS or label[0] == "-" or label[-1] == "-":
            raise AddressError(f"invalid domain label {label!r}")
    return name, False


def _parse_literal(text: str) -> str:
    if not text.endswith("]"):
        raise AddressError("unterminated address literal")
    body = text[1:-1]
    try:
        if body[:5].lower() == "ipv6:":
            return f"[IPv6:{ipaddress.IPv6Address(body[5:]).compressed}]"
        return f"[{ipaddress.IPv4Address(body)}]"
    except ValueError:
        raise AddressError(f"invalid address literal {text!r}") from None


def _needs_quotes(local: str) -> bool:
    try:
        _check_dot_atom(local)
    except AddressError:
        return True
    return False


def _quote_local(local: str) -> str:
    escaped = local.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'
