"""The plain sections: identity, bus, resolver, certificates, mail store, queue, telemetry."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Annotated, Literal, Self

from pydantic import AfterValidator, BeforeValidator, Field, model_validator

from libs.common.contract.subjects import MAX_SCAN_SIZE
from libs.common.mail import languages

from .base import Section
from .fieldtypes import (
    Address,
    DnsServer,
    Domain,
    HostName,
    HostPort,
    ListenAddress,
    NatsUrl,
    PositiveDuration,
    ReadableFile,
    Size,
    comma_list,
)
from .problems import problem
from .units import parse_size

_LANGUAGE = re.compile(r"[a-z]{2,3}(-[a-z0-9]{2,8})*")
_PREFIX = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?")


def _language(value: str) -> str:
    tag = value.strip().lower()
    if not _LANGUAGE.fullmatch(tag):
        raise ValueError(f"{value!r} is not a language tag like 'en' or 'pt-br'")
    return tag


def _report_language(value: str) -> str:
    if languages.match(value) is None:
        available = ", ".join(languages.AVAILABLE)
        raise ValueError(f"no report catalog for {value!r}; available: {available}")
    return value


def _prefix(value: str) -> str:
    if not _PREFIX.fullmatch(value):
        raise ValueError(f"{value!r}: use lower-case letters, digits and '-'")
    return value


class ServerSection(Section):
    hostname: HostName = Field(
        default="localhost",
        description="Name this server gives itself: in the SMTP greeting, in the Received "
        "headers it adds and as Reporting-MTA of delivery reports. Set it to the name the "
        "MX record points at.",
    )
    local_domains: Annotated[list[Domain], BeforeValidator(comma_list)] = Field(
        default_factory=list,
        description="Domains whose mail ends up in local mailboxes; mail to them is accepted "
        "from anyone, mail to other domains only from senders allowed to relay. Stored "
        "lower-case, without a trailing dot.",
    )
    postmaster: Address | None = Field(
        default=None,
        description="Address that receives reports meant for the administrator; null means "
        "postmaster@ followed by server.hostname.",
    )

    @property
    def postmaster_address(self) -> str:
        return self.postmaster or f"postmaster@{self.hostname.lower()}"


class NatsSection(Section):
    url: Annotated[list[NatsUrl], BeforeValidator(comma_list)] = Field(
        default_factory=list,
        description="NATS servers to connect to: one URL, a comma-separated string or a list "
        "(a URL without scheme gets nats://). Empty: `mailbus up` starts an embedded server; "
        "the services on their own refuse to start.",
    )
    credentials_file: ReadableFile | None = Field(
        default=None,
        description="A NATS .creds file passed to every connection, for servers that require "
        "authentication. Relative paths are taken from the config file's directory.",
    )
    tls_ca_file: ReadableFile | None = Field(
        default=None,
        description="PEM bundle of the CAs that signed the NATS servers' certificates. Set: "
        "every connection is TLS, and a server whose certificate does not lead to these CAs "
        "or does not name the host in nats.url is refused. null: TLS only if the server asks "
        "for it, verified against the system's CAs.",
    )
    tls_cert_file: ReadableFile | None = Field(
        default=None,
        description="Client certificate (PEM) for servers that verify their clients (mutual "
        "TLS); with tls_key_file.",
    )
    tls_key_file: ReadableFile | None = Field(
        default=None,
        description="Private key (PEM) of tls_cert_file.",
    )
    stream_replicas: int = Field(
        default=1,
        ge=1,
        le=5,
        description="Copies JetStream keeps of every stream, key-value bucket and object "
        "store mailbus creates: 1 on one machine, 3 on a NATS cluster.",
    )

    @model_validator(mode="after")
    def _client_pair(self) -> Self:
        if self.tls_cert_file and not self.tls_key_file:
            raise problem(("tls_key_file",), "required when nats.tls_cert_file is set")
        if self.tls_key_file and not self.tls_cert_file:
            raise problem(("tls_cert_file",), "required when nats.tls_key_file is set")
        return self


class DnsSection(Section):
    servers: Annotated[list[DnsServer], BeforeValidator(comma_list)] = Field(
        default_factory=list,
        description="Resolvers for the sender-domain, SPF and MX look-ups, as host or "
        "host:port (port 53 when left out; an IPv6 address with a port is [addr]:port). "
        "Empty: the system's resolvers.",
    )
    timeout: PositiveDuration = Field(
        default=timedelta(seconds=5),
        description="How long one DNS look-up may take before it counts as a temporary failure.",
    )


class TlsSection(Section):
    cert_file: ReadableFile | None = Field(
        default=None,
        description="PEM certificate chain for STARTTLS and implicit-TLS listeners. When "
        "neither file is set, a self-signed certificate for server.hostname is made at start.",
    )
    key_file: ReadableFile | None = Field(
        default=None,
        description="PEM private key of cert_file; give both files or neither.",
    )

    @model_validator(mode="after")
    def _both_or_neither(self) -> Self:
        if self.cert_file and not self.key_file:
            raise problem(("key_file",), "required when tls.cert_file is set")
        if self.key_file and not self.cert_file:
            raise problem(("cert_file",), "required when tls.key_file is set")
        return self


class MailboxesSection(Section):
    store: Literal["jetstream", "lmtp"] = Field(
        default="jetstream",
        description="Where mail for local recipients goes. jetstream: kept on the bus and read "
        "through the POP3 listener. lmtp: handed over to the LMTP server at lmtp_address.",
    )
    lmtp_address: HostPort | None = Field(
        default=None,
        description="host:port of the LMTP mail store (Dovecot, Cyrus); required when store "
        "is lmtp.",
    )
    quota: Size = Field(
        default=parse_size("1GB"),
        description="Size limit of one mailbox; 0 means none. Mail that would not fit is "
        "refused with 452 (temporary) or 552, as RFC 5321 asks.",
    )

    @model_validator(mode="after")
    def _lmtp_needs_address(self) -> Self:
        if self.store == "lmtp" and self.lmtp_address is None:
            raise problem(("lmtp_address",), "required when mailboxes.store is lmtp")
        return self


class AntispamSection(Section):
    spf: bool = Field(
        default=True,
        description="Check the envelope sender's SPF record (RFC 7208) at MAIL FROM, and the "
        "HELO name's for the null sender. A temperror result is refused with 451 4.7.24; a "
        "permerror is recorded and accepted.",
    )
    spf_fail_action: Literal["reject", "tag"] = Field(
        default="reject",
        description="What an SPF fail result does. reject: refuse the sender (550 5.7.23). "
        "tag: accept the message and record the result in its headers.",
    )
    spf_softfail_action: Literal["reject", "tag"] = Field(
        default="tag",
        description="What an SPF softfail result does, as spf_fail_action.",
    )
    spamd: HostPort | None = Field(
        default=None,
        description="host:port of a SpamAssassin spamd that scores every message at the end "
        "of DATA; null turns content scanning off.",
    )
    spamd_timeout: PositiveDuration = Field(
        default=timedelta(seconds=30),
        description="How long one scan may take, connection included; past it spamd counts "
        "as down (spamd_failure).",
    )
    spamd_max_size: Size = Field(
        default=parse_size("500KB"),
        description="Larger messages are passed without a scan, as spamc does. The message "
        "travels to policy in one NATS message, so this must stay below the bus's "
        "max_payload (8 MiB) less 64 KiB.",
    )
    spamd_failure: Literal["accept", "tempfail"] = Field(
        default="accept",
        description="spamd down, failing or slower than spamd_timeout. accept: take the "
        "message, marked unscanned. tempfail: refuse it for now (451 4.7.1).",
    )
    spam_tag_score: float = Field(
        default=5.0,
        description="spamd score at or above which the message gets X-Spam-Flag: YES (the "
        "required= of X-Spam-Status).",
    )
    spam_reject_score: float = Field(
        default=10.0,
        description="spamd score at or above which a message is refused at the end of DATA "
        "(550 5.7.1) and not stored.",
    )

    @model_validator(mode="after")
    def _scan_fits_the_bus(self) -> Self:
        if self.spamd_max_size <= 0:
            raise problem(("spamd_max_size",), "must be more than 0")
        if self.spamd_max_size > MAX_SCAN_SIZE:
            raise problem(
                ("spamd_max_size",),
                f"at most {MAX_SCAN_SIZE} bytes: a message to scan travels to policy in one "
                "NATS message of at most 8 MiB (max_payload)",
            )
        if self.spam_tag_score > self.spam_reject_score:
            raise problem(("spam_tag_score",), "must not be above spam_reject_score")
        return self


class QueueSection(Section):
    retry_interval: PositiveDuration = Field(
        default=timedelta(minutes=30),
        description="Pause between two delivery attempts of a recipient that was deferred.",
    )
    warn_after: PositiveDuration = Field(
        default=timedelta(hours=4),
        description="Age of a still undelivered message at which its sender gets one delay "
        "warning; retries continue. Must be shorter than bounce_after.",
    )
    bounce_after: PositiveDuration = Field(
        default=timedelta(days=5),
        description="Age at which retrying stops: the sender gets a failure report for the "
        "recipients still pending and the message leaves the queue.",
    )
    report_language: Annotated[str, AfterValidator(_language), AfterValidator(_report_language)] = (
        Field(
            default="en",
            description="Language tag of the failure, delay and other reports mailbus writes "
            "(en, cs, de, fr, es, ...; whatever the report catalog has).",
        )
    )

    @model_validator(mode="after")
    def _warning_before_bounce(self) -> Self:
        if self.warn_after >= self.bounce_after:
            raise problem(("warn_after",), "must be shorter than queue.bounce_after")
        return self


class LoggingSection(Section):
    level: Literal["debug", "info", "warning", "error"] = Field(
        default="info",
        description="Least important log lines written. `--log-level` and "
        "`MAILBUS_LOG_LEVEL` override it for one process.",
    )
    format: Literal["text", "json"] = Field(
        default="text",
        description="text: one line per event in the shape of Postfix's maillog (syslog "
        "time, host, `mailbus/<daemon>[pid]:`, then the queue id), read by pflogsumm and "
        "fail2ban. json: the same fields as one JSON object per line.",
    )


class TelemetrySection(Section):
    service_name_prefix: Annotated[str, AfterValidator(_prefix)] = Field(
        default="mailbus",
        description="Start of each service's OpenTelemetry `service.name`, which is "
        "`<prefix>-<service>`. Exporters are set up with the standard `OTEL_*` environment "
        "variables.",
    )
    metrics_address: ListenAddress | None = Field(
        default=None,
        description="host:port where each service process serves Prometheus /metrics; null "
        "turns it off. Off by default because `mailbus up` runs several processes on one "
        "host, and metrics should not be open to the network unasked.",
    )


class PolicySection(Section):
    timeout: PositiveDuration = Field(
        default=timedelta(seconds=5),
        description="How long ingress waits for the policy service's answer to one SMTP "
        "step. Without an answer in time it replies 451 4.3.0 and never accepts.",
    )
