"""List entries: listeners and user accounts."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, BeforeValidator, Field

from .base import Section
from .fieldtypes import Address, Duration, ListenAddress, comma_list, split_host_port

_NAME = re.compile(r"[A-Za-z0-9_-]+")


def _listener_name(value: str) -> str:
    # Names end up in log lines and metric labels, so keep them plain.
    if not _NAME.fullmatch(value):
        raise ValueError(f"{value!r}: use letters, digits, '_' and '-'")
    return value


def _password_hash(value: str) -> str:
    if not value.strip():
        raise ValueError("empty; leave the key out for an account that cannot log in")
    # Only argon2id is checked at login: anything else would load and then refuse
    # every password, silently.
    if not value.startswith("$argon2id$"):
        kind = value.split("$")[1] if value.startswith("$") and value.count("$") > 1 else ""
        shown = f" ({kind[:16]})" if kind else ""
        raise ValueError(
            f"not an argon2id hash{shown}; `mailbus user hash` prints one ($argon2id$...)"
        )
    return value


class Listener(Section):
    name: Annotated[str, AfterValidator(_listener_name)] = Field(
        description="Unique name of the listener, shown in logs and metrics.",
    )
    protocol: Literal["smtp", "pop3"] = Field(
        default="smtp",
        description="smtp: receives mail (port 25) or submissions (port 587). pop3: lets "
        "users fetch mail from their jetstream mailboxes.",
    )
    address: ListenAddress = Field(
        description="host:port to listen on, e.g. 0.0.0.0:25 or [::]:25. Port 0 "
        "lets the system pick a free port, for tests.",
    )
    tls: Literal["none", "starttls", "implicit"] = Field(
        default="starttls",
        description="none: plain text only. starttls: plain text until the client asks for "
        "TLS (STARTTLS, or STLS in POP3). implicit: TLS from the first byte (465, 995).",
    )
    require_auth: bool = Field(
        default=False,
        description="Refuse mail until the client has authenticated, as a submission port "
        "does. AUTH is only offered once the connection is encrypted.",
    )
    pregreet_wait: Duration = Field(
        default=timedelta(0),
        description="SMTP: wait this long before the greeting; a client that sends anything "
        "first is refused (554 5.5.0) and disconnected, as Postfix's postscreen does. 0s: "
        "greet at once.",
    )
    proxy_protocol: bool = Field(
        default=False,
        description="Expect an HAProxy PROXY protocol (v1 or v2) header on every connection "
        "and take the client address from it, for load balancers in front of ingress. Only "
        "turn it on when every connection comes through such a proxy.",
    )

    @property
    def host(self) -> str:
        """The bind address without brackets: "::" for "[::]:25"."""
        return split_host_port(self.address)[0]

    @property
    def port(self) -> int:
        return split_host_port(self.address)[1]


class User(Section):
    address: Address = Field(
        description="The account's address, local@domain, used as login name for SMTP AUTH "
        "and POP3; its domain must be one of server.local_domains.",
    )
    password_hash: Annotated[str, AfterValidator(_password_hash)] | None = Field(
        default=None,
        description="Argon2 hash of the password (`mailbus user hash` prints one); null: the "
        "account receives mail but cannot log in.",
    )
    aliases: Annotated[list[Address], BeforeValidator(comma_list)] = Field(
        default_factory=list,
        description="More addresses delivered to this account's mailbox; local domains only.",
    )

    @property
    def all_addresses(self) -> list[str]:
        return [self.address, *self.aliases]
