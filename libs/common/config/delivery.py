"""Outbound delivery: MX or a relay host, and how to log in to that relay host."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Literal, Self

from pydantic import Field, PrivateAttr, SecretStr, model_validator

from .base import Section
from .fieldtypes import Host, Port, PositiveDuration, ReadableFile
from .problems import Loc, problem, problems


def read_secret(path: str) -> str:
    """The file's text without its final newline: what `echo secret > file` meant."""
    text = Path(path).read_text(encoding="utf-8")
    return text.removesuffix("\n").removesuffix("\r")


class RelayAuth(Section):
    enabled: bool = Field(
        default=False,
        description="Log in before handing mail to the relay host.",
    )
    method: Literal["smtp_auth", "pop3_before_smtp"] = Field(
        default="smtp_auth",
        description="smtp_auth: SMTP AUTH on the relay connection. pop3_before_smtp: log in "
        "to the relay host's POP3 server (pop3_port) first, then send without AUTH.",
    )
    username: str | None = Field(
        default=None,
        description="User name for the relay host; required when auth is enabled.",
    )
    password: SecretStr | None = Field(
        default=None,
        description="Password for the relay host. Prefer password_file, which keeps it out "
        "of the config file.",
    )
    password_file: ReadableFile | None = Field(
        default=None,
        description="File holding the password (a Kubernetes Secret mount, for instance); "
        "read at load, without its trailing newline. Excludes password.",
    )
    pop3_port: Port = Field(
        default=110,
        description="POP3 port of the relay host, used by pop3_before_smtp.",
    )
    pop3_grant: PositiveDuration = Field(
        default=timedelta(seconds=60),
        description="How long the relay host lets us relay after a POP3 login "
        "(pop3_before_smtp): we log in again once half of it has passed, so mail never "
        "arrives after the grant ended (the relay host would refuse it with 554).",
    )
    allow_plaintext: bool = Field(
        default=False,
        description="Send the password (SMTP AUTH, POP3 PASS) over a connection without TLS "
        "too. false: the password only ever goes out encrypted; a relay host that offers no "
        "TLS gets no password, and the mail waits with a reason that says why.",
    )
    _file_password: str | None = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _resolve_password(self) -> Self:
        if self.password is not None and self.password_file is not None:
            raise problem(("password_file",), "give password or password_file, not both")
        if self.password_file is not None:
            try:
                self._file_password = read_secret(self.password_file)
            except (OSError, UnicodeError) as exc:
                raise problem(("password_file",), f"cannot read: {exc}") from None
            if not self._file_password:
                raise problem(("password_file",), f"{self.password_file!r} is empty")
        found: list[tuple[Loc, str]] = []
        if self.enabled and not self.username:
            found.append((("username",), "required when auth is enabled"))
        if self.enabled and self.effective_password is None:
            found.append((("password",), "required when auth is enabled (or password_file)"))
        if found:
            raise problems(found)
        return self

    @property
    def effective_password(self) -> str | None:
        """The password from password_file, else the inline one."""
        if self._file_password is not None:
            return self._file_password
        return self.password.get_secret_value() if self.password is not None else None


class RelayHost(Section):
    host: Host | None = Field(
        default=None,
        description="The smarthost all non-local mail goes to when delivery.mode is relay "
        "(required then).",
    )
    port: Port = Field(default=25, description="SMTP port of the relay host.")
    auth: RelayAuth = Field(
        default_factory=RelayAuth,
        description="Logging in to the relay host.",
    )


class DeliverySection(Section):
    mode: Literal["mx", "relay"] = Field(
        default="mx",
        description="mx: deliver straight to the MX hosts of each recipient domain. relay: "
        "send all non-local mail through relay_host.",
    )
    mx_port: Port = Field(
        default=25,
        description="Port used on MX hosts; only tests point it elsewhere (local sinks).",
    )
    relay_host: RelayHost = Field(
        default_factory=RelayHost,
        description="The smarthost used when mode is relay.",
    )
    tls: Literal["opportunistic", "required", "verify", "none"] = Field(
        default="opportunistic",
        description="TLS on outbound connections. opportunistic: STARTTLS when the server "
        "offers it (certificate not checked), plain text otherwise. required: defer the mail "
        "rather than send it in plain text; encrypted, the certificate is not checked "
        "(Postfix's encrypt). verify: as required, and the certificate chain must lead to "
        "tls_ca_file (or the system's CAs) and name the host connected to: the relay host's "
        "name, or the MX host's (Postfix's secure). none: never STARTTLS.",
    )
    tls_ca_file: ReadableFile | None = Field(
        default=None,
        description="PEM bundle of the CAs that tls: verify trusts; null: the system's.",
    )
    max_delivery_threads: int = Field(
        default=32,
        ge=1,
        description="Outbound deliveries in progress at once, all delivery workers together.",
    )
    connect_timeout: PositiveDuration = Field(
        default=timedelta(seconds=30),
        description="How long to wait for a remote server to accept the connection.",
    )

    @model_validator(mode="after")
    def _relay_needs_host(self) -> Self:
        if self.mode == "relay" and self.relay_host.host is None:
            raise problem(("relay_host", "host"), "required when delivery.mode is relay")
        return self
