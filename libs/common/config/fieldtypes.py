"""Value types of the configuration: how each is read, checked, written back and named.

Every type carries a `Kind` so the reference in docs/configuration.md names it
the way an operator writes it ("duration", "host:port"), not as Python sees it.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, NamedTuple
from urllib.parse import urlsplit

import idna
from pydantic import AfterValidator, BeforeValidator, Field, PlainSerializer, ValidationInfo

from .ipgroups import parse_ip_entry
from .units import format_duration, format_size, parse_duration, parse_size


@dataclass(frozen=True)
class Kind:
    """How the reference names a type."""

    name: str


_LABEL = re.compile(r"(?!-)[a-z0-9-]{1,63}(?<!-)")
_GROUP_NAME = re.compile(r"[A-Za-z0-9_.-]+")


def normalize_domain(value: str) -> str:
    """Lower-case, without the root dot, IDNA A-labels; ValueError if no valid domain."""
    text = value.strip().rstrip(".").lower()
    try:
        # IDNA 2008 (UTS 46, non-transitional): the stdlib's "idna" codec is IDNA 2003,
        # which maps faß.de to fass.de, another domain.
        text = idna.encode(text, uts46=True).decode("ascii") if not text.isascii() else text
    except UnicodeError:
        raise ValueError(f"{value!r} is not a valid domain name") from None
    labels = text.split(".")
    if not text or len(text) > 253 or not all(_LABEL.fullmatch(label) for label in labels):
        raise ValueError(f"{value!r} is not a valid domain name")
    return text


def _hostname(value: str) -> str:
    normalize_domain(value)
    return value.strip().rstrip(".")


def normalize_address(value: str) -> str:
    """local@domain with the domain normalized; the local part keeps its case (RFC 5321)."""
    local, at, domain = value.strip().rpartition("@")
    if not at or not local:
        raise ValueError(f"{value!r} is not an address of the form local@domain")
    if len(local) > 64 or any(c.isspace() or c in '<>@,;"\\' for c in local):
        raise ValueError(f"{value!r} has an invalid local part")
    try:
        return f"{local}@{normalize_domain(domain)}"
    except ValueError:
        raise ValueError(f"{value!r} has an invalid domain") from None


def split_host_port(value: str, default_port: int | None = None) -> tuple[str, int]:
    """("host", port) of "host:port", "[v6]:port" or, with a default port, "host" / "v6"."""
    text = value.strip()
    host, port_text = text, ""
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"{value!r}: expected [IPv6]:port")
        port_text = rest[1:]
        _require_ipv6(host, value)
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    elif text.count(":") > 1:
        # A bare IPv6 address: only allowed where the port may be left out.
        _require_ipv6(text, value)
        if default_port is None:
            raise ValueError(f"{value!r}: write an IPv6 address with a port as [addr]:port")
    if not port_text:
        if default_port is None:
            raise ValueError(f"{value!r}: expected host:port")
        return _check_host(host, value), default_port
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"{value!r}: port must be a number from 0 to 65535")
    return _check_host(host, value), int(port_text)


def _require_ipv6(host: str, value: str) -> None:
    try:
        ipaddress.IPv6Address(host)
    except ValueError:
        raise ValueError(f"{value!r}: {host!r} is not an IPv6 address") from None


def _check_host(host: str, value: str) -> str:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        try:
            normalize_domain(host)
        except ValueError:
            raise ValueError(
                f"{value!r}: {host!r} is neither an IP address nor a host name"
            ) from None
    return host


def join_host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _host_port(allow_any_port: bool) -> AfterValidator:
    def check(value: str) -> str:
        host, port = split_host_port(value)
        if port == 0 and not allow_any_port:
            raise ValueError(f"{value!r}: port must be a number from 1 to 65535")
        return join_host_port(host, port)

    return AfterValidator(check)


class Endpoint(NamedTuple):
    host: str
    port: int

    def __str__(self) -> str:
        return join_host_port(self.host, self.port)


def _dns_server(value: object) -> object:
    if isinstance(value, str):
        host, port = split_host_port(value, default_port=53)
        if port == 0:
            raise ValueError(f"{value!r}: port must be a number from 1 to 65535")
        return Endpoint(host, port)
    return value


def comma_list(value: object) -> object:
    """Lets a list be written as one item, "a, b" or null as well as a YAML list."""
    if value is None:
        return []
    if isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    return value


def none_as_empty_dict(value: object) -> object:
    return {} if value is None else value


def _ip_entry(value: str) -> str:
    parse_ip_entry(value)
    return value.strip()


def _group_name(value: str) -> str:
    if not _GROUP_NAME.fullmatch(value):
        raise ValueError(f"{value!r}: a group name is letters, digits, '_', '.' and '-'")
    return value


def _positive(value: timedelta) -> timedelta:
    if value <= timedelta(0):
        raise ValueError("must be longer than 0s")
    return value


def _nats_url(value: str) -> str:
    text = value.strip()
    if "://" not in text:
        text = f"nats://{text}"
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ValueError(f"{value!r} is not a valid NATS URL") from None
    if parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
        raise ValueError(f"{value!r}: expected nats://host:port (or tls://, ws://, wss://)")
    if port == 0:
        raise ValueError(f"{value!r}: port must be a number from 1 to 65535")
    return text


def _readable_file(value: str, info: ValidationInfo) -> str:
    """The path made absolute against the config file's directory, once it is readable."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        base = (info.context or {}).get("base_dir")
        path = Path(base if base is not None else Path.cwd()) / path
    try:
        with path.open("rb") as handle:
            handle.read(1)
    except OSError as exc:
        raise ValueError(f"cannot read {str(path)!r}: {exc.strerror or exc}") from None
    return str(path)


def _host(value: str) -> str:
    return _check_host(value.strip(), value)


_as_duration = BeforeValidator(parse_duration)
_duration_out = PlainSerializer(format_duration, return_type=str, when_used="json")

PositiveDuration = Annotated[
    timedelta, _as_duration, AfterValidator(_positive), _duration_out, Kind("duration")
]
# A duration where 0s means "off".
Duration = Annotated[timedelta, _as_duration, _duration_out, Kind("duration")]
Size = Annotated[
    int,
    BeforeValidator(parse_size),
    PlainSerializer(format_size, return_type=str | int, when_used="json"),
    Kind("size"),
]
Domain = Annotated[str, AfterValidator(normalize_domain), Kind("domain")]
HostName = Annotated[str, AfterValidator(_hostname), Kind("host name")]
Address = Annotated[str, AfterValidator(normalize_address), Kind("address")]
HostPort = Annotated[str, _host_port(allow_any_port=False), Kind("host:port")]
ListenAddress = Annotated[str, _host_port(allow_any_port=True), Kind("host:port")]
DnsServer = Annotated[
    Endpoint,
    BeforeValidator(_dns_server),
    PlainSerializer(str, return_type=str, when_used="json"),
    Kind("host or host:port"),
]
IpEntry = Annotated[str, AfterValidator(_ip_entry), Kind("address, CIDR or range")]
GroupName = Annotated[str, AfterValidator(_group_name), Kind("group name")]
NatsUrl = Annotated[str, AfterValidator(_nats_url), Kind("NATS URL")]
ReadableFile = Annotated[str, AfterValidator(_readable_file), Kind("file path")]
Host = Annotated[str, AfterValidator(_host), Kind("host")]
Port = Annotated[int, Field(ge=1, le=65535), Kind("port")]
Count = Annotated[int, Field(ge=0), Kind("integer")]
