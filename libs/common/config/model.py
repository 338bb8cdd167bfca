"""The whole configuration, its cross-references, and the questions services ask of it."""

from __future__ import annotations

from collections.abc import Collection, Iterable
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, PrivateAttr, ValidationInfo, field_validator

from .base import Section
from .delivery import DeliverySection
from .entries import Listener, User
from .fieldtypes import GroupName, IpEntry, ReadableFile, comma_list, none_as_empty_dict
from .ipgroups import IpGroup
from .problems import Loc, problems
from .rules import RelaySection, SecuritySection
from .sections import (
    AntispamSection,
    DnsSection,
    LoggingSection,
    MailboxesSection,
    NatsSection,
    PolicySection,
    QueueSection,
    ServerSection,
    TelemetrySection,
    TlsSection,
)


def _null_list(value: object) -> object:
    return [] if value is None else value


def default_listeners() -> list[Listener]:
    # Loopback only: starting with an empty file must not open a service to the network.
    return [
        Listener(name="smtp", protocol="smtp", address="127.0.0.1:2525", tls="starttls"),
        Listener(
            name="submission",
            protocol="smtp",
            address="127.0.0.1:2587",
            tls="starttls",
            require_auth=True,
        ),
        Listener(name="pop3", protocol="pop3", address="127.0.0.1:2110", tls="starttls"),
    ]


IpGroupEntries = Annotated[list[IpEntry], BeforeValidator(comma_list)]

# Keys that name an ip_groups entry, as (section, key).
GROUP_REFERENCES: tuple[tuple[str, str], ...] = (
    ("relay", "allowed_ip_group"),
    ("relay", "hide_local_ip_group"),
    ("security", "exempt_ip_group"),
)


def unknown_group_problems(
    groups: Collection[object], references: Iterable[tuple[Loc, object]]
) -> list[tuple[Loc, str]]:
    return [
        (loc, f"no ip group named {name!r}")
        for loc, name in references
        if isinstance(name, str) and name not in groups
    ]


class Config(Section):
    """mailbus configuration; every key has a default, so `Config()` is a closed relay."""

    server: ServerSection = Field(
        default_factory=ServerSection,
        description="Who this server is and which domains it receives mail for.",
    )
    nats: NatsSection = Field(
        default_factory=NatsSection,
        description="The NATS JetStream bus that connects the services.",
    )
    dns: DnsSection = Field(
        default_factory=DnsSection,
        description="DNS look-ups: sender domains, SPF and MX records.",
    )
    listeners: Annotated[list[Listener], BeforeValidator(_null_list)] = Field(
        default_factory=default_listeners,
        description="SMTP and POP3 listeners, all served by the ingress service. The default "
        "listens on 127.0.0.1 only.",
    )
    tls: TlsSection = Field(
        default_factory=TlsSection,
        description="Certificate of the STARTTLS and implicit-TLS listeners.",
    )
    ip_groups: Annotated[dict[GroupName, IpGroupEntries], BeforeValidator(none_as_empty_dict)] = (
        Field(
            default_factory=dict,
            description="Named groups of client addresses, referred to by name elsewhere. Each "
            "entry is an address, a CIDR network or a range 'first-last', IPv4 or IPv6.",
        )
    )
    users: Annotated[list[User], BeforeValidator(_null_list)] = Field(
        default_factory=list,
        description="Local accounts: they log in with SMTP AUTH and POP3, and they are the "
        "known recipients of the local domains.",
    )
    users_file: ReadableFile | None = Field(
        default=None,
        description="YAML file with more accounts (a list, or a mapping with a users: key), "
        "added to users when the configuration is loaded; an address defined twice is an "
        "error.",
    )
    mailboxes: MailboxesSection = Field(
        default_factory=MailboxesSection,
        description="Where mail for local recipients is stored.",
    )
    relay: RelaySection = Field(
        default_factory=RelaySection,
        description="Which clients may send mail to non-local domains.",
    )
    security: SecuritySection = Field(
        default_factory=SecuritySection,
        description="Limits per client address, enforced across all replicas.",
    )
    antispam: AntispamSection = Field(
        default_factory=AntispamSection,
        description="SPF and content scanning.",
    )
    delivery: DeliverySection = Field(
        default_factory=DeliverySection,
        description="How mail leaves: to MX hosts or through a relay host.",
    )
    queue: QueueSection = Field(
        default_factory=QueueSection,
        description="Retries, delay warnings and giving up.",
    )
    logging: LoggingSection = Field(
        default_factory=LoggingSection,
        description="The mail log: its level and format.",
    )
    telemetry: TelemetrySection = Field(
        default_factory=TelemetrySection,
        description="Traces and metrics.",
    )
    policy: PolicySection = Field(
        default_factory=PolicySection,
        description="How ingress talks to the policy service.",
    )

    _groups: dict[str, IpGroup] = PrivateAttr(default_factory=dict)
    _local: frozenset[str] = PrivateAttr(default_factory=frozenset)

    @field_validator("listeners")
    @classmethod
    def _unique_listeners(cls, listeners: list[Listener]) -> list[Listener]:
        found: list[tuple[Loc, str]] = []
        names: dict[str, int] = {}
        binds: dict[tuple[str, int], int] = {}
        for index, listener in enumerate(listeners):
            if listener.name in names:
                found.append(((index, "name"), f"{listener.name!r} is used twice"))
            names.setdefault(listener.name, index)
            bind = (listener.host, listener.port)
            if bind in binds and listener.port != 0:
                other = listeners[binds[bind]].name
                found.append(((index, "address"), f"same address as listener {other!r}"))
            binds.setdefault(bind, index)
        if found:
            raise problems(found)
        return listeners

    @field_validator("users")
    @classmethod
    def _valid_accounts(cls, users: list[User], info: ValidationInfo) -> list[User]:
        server = info.data.get("server")
        local = set(server.local_domains) if isinstance(server, ServerSection) else None
        found: list[tuple[Loc, str]] = []
        seen: set[str] = set()
        for index, user in enumerate(users):
            keys: list[Loc] = [(index, "address")]
            keys += [(index, "aliases", n) for n in range(len(user.aliases))]
            for key, address in zip(keys, user.all_addresses, strict=True):
                if address.lower() in seen:
                    found.append((key, f"{address!r} is defined twice"))
                seen.add(address.lower())
                domain = address.rpartition("@")[2]
                if local is not None and domain not in local:
                    found.append((key, f"{domain!r} is not one of server.local_domains"))
        if found:
            raise problems(found)
        return users

    @field_validator("relay", "security")
    @classmethod
    def _known_groups(cls, section: Section, info: ValidationInfo) -> Section:
        groups = info.data.get("ip_groups")
        if groups is None:
            return section  # ip_groups is invalid; the loader checks names on the raw data
        refs = [
            ((key,), getattr(section, key))
            for name, key in GROUP_REFERENCES
            if name == info.field_name
        ]
        found = unknown_group_problems(groups, refs)
        if found:
            raise problems(found)
        return section

    def model_post_init(self, context: Any, /) -> None:
        self._groups = {name: IpGroup(entries) for name, entries in self.ip_groups.items()}
        self._local = frozenset(self.server.local_domains)

    def ip_group(self, name: str) -> IpGroup | None:
        """The group of that name, or None when there is none."""
        return self._groups.get(name)

    @property
    def local_domains(self) -> list[str]:
        """server.local_domains: lower-case, no trailing dot."""
        return self.server.local_domains

    def is_local_domain(self, domain: str) -> bool:
        return domain.strip().rstrip(".").lower() in self._local

    @property
    def smtp_listeners(self) -> list[Listener]:
        return [listener for listener in self.listeners if listener.protocol == "smtp"]

    @property
    def pop3_listeners(self) -> list[Listener]:
        return [listener for listener in self.listeners if listener.protocol == "pop3"]

    def warnings(self) -> list[str]:
        """Valid but risky settings, for the log at start and for `config check`."""
        found = []
        if self.relay.mode == "open":
            found.append("relay.mode is open: anyone can send mail anywhere through this server")
        for listener in self.listeners:
            if listener.require_auth and listener.tls == "none":
                found.append(
                    f"listener {listener.name!r}: require_auth with tls none; AUTH is never "
                    "offered without TLS, so no client can send"
                )
        auth = self.delivery.relay_host.auth
        if self.delivery.mode == "relay" and auth.enabled and self.delivery.tls == "none":
            found.append("delivery.tls is none: the relay host password is sent in plain text")
        return found
