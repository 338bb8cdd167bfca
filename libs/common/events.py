"""The event log's vocabulary: frozen, versioned models named in the past tense.

A change within a schema version may only add optional fields; golden files
under tests/golden pin the wire format of every type and version.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter


def utcnow() -> datetime:
    return datetime.now(UTC)


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")


class Recipient(_Model):
    """One RCPT TO with the DSN parameters that belong to it (RFC 3461)."""

    address: str
    orcpt: str | None = None
    notify: tuple[str, ...] = ()


class Client(_Model):
    ip: str
    port: int = 0
    helo: str = ""
    listener: str = ""


class TlsInfo(_Model):
    version: str
    cipher: str = ""


class Event(_Model):
    event_id: str
    queue_id: str
    version: int = 1
    occurred_at: datetime = Field(default_factory=utcnow)


class MessageReceived(Event):
    type: Literal["MessageReceived"] = "MessageReceived"
    mail_from: str
    recipients: tuple[Recipient, ...]
    size: int
    client: Client
    tls: TlsInfo | None = None
    auth_user: str | None = None
    policy_rules: tuple[str, ...] = ()
    envid: str | None = None
    ret: Literal["FULL", "HDRS"] | None = None
    smtputf8: bool = False
    # W3C traceparent of the SMTP session, so retries days later can link to it.
    trace_parent: str | None = None


class Destination(_Model):
    """Where a group of recipients goes: the relay host, one domain's MX, or local."""

    kind: Literal["relay", "mx", "local"]
    domain: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.domain}"


class DeliveryScheduled(Event):
    """The queue handed these recipients to a delivery worker as one job."""

    type: Literal["DeliveryScheduled"] = "DeliveryScheduled"
    job_id: str
    attempt: int
    destination: Destination
    recipients: tuple[str, ...]


class _DeliveryResult(Event):
    job_id: str
    attempt: int
    recipient: str
    remote_host: str = ""
    reply_code: int = 0
    reply_text: str = ""
    status: str = ""  # RFC 3463 enhanced status code
    tls_version: str | None = None
    worker: str = ""


class DeliverySucceeded(_DeliveryResult):
    type: Literal["DeliverySucceeded"] = "DeliverySucceeded"


class DeliveryDeferred(_DeliveryResult):
    type: Literal["DeliveryDeferred"] = "DeliveryDeferred"


class DeliveryFailed(_DeliveryResult):
    type: Literal["DeliveryFailed"] = "DeliveryFailed"


class MessageDelayed(Event):
    type: Literal["MessageDelayed"] = "MessageDelayed"
    recipients: tuple[str, ...]


class MessageExpired(Event):
    type: Literal["MessageExpired"] = "MessageExpired"
    recipients: tuple[str, ...]


class MessageCompleted(Event):
    """Every recipient is final; the body is deleted after this is durable."""

    type: Literal["MessageCompleted"] = "MessageCompleted"
    delivered: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()


AnyEvent = Annotated[
    MessageReceived
    | DeliveryScheduled
    | DeliverySucceeded
    | DeliveryDeferred
    | DeliveryFailed
    | MessageDelayed
    | MessageExpired
    | MessageCompleted,
    Field(discriminator="type"),
]

EVENT_TYPES: tuple[type[Event], ...] = (
    MessageReceived,
    DeliveryScheduled,
    DeliverySucceeded,
    DeliveryDeferred,
    DeliveryFailed,
    MessageDelayed,
    MessageExpired,
    MessageCompleted,
)

_adapter: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def parse_event(data: bytes | str) -> AnyEvent:
    return _adapter.validate_json(data)


def encode(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


def event_type(event: Event) -> str:
    # Each class is named after its `type` literal, which the golden tests pin.
    return type(event).__name__


class DeliveryJob(_Model):
    """A command, not an event: what one delivery worker should attempt now."""

    version: int = 1
    job_id: str
    queue_id: str
    attempt: int
    destination: Destination
    mail_from: str
    recipients: tuple[Recipient, ...]
    size: int
    envid: str | None = None
    ret: Literal["FULL", "HDRS"] | None = None
    trace_parent: str | None = None
