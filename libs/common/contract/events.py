"""The event log's vocabulary: frozen, versioned models named in the past tense.

A change within a schema version may only add optional fields; golden files
under tests/golden pin the wire format of every type and version.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from libs.common.contract.antispam import AntispamResults


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
    # The services that may publish this type: the bus permissions are derived from it
    # (contract/permissions.py), so a new type names its publisher here and nowhere else.
    publishers: ClassVar[tuple[str, ...]] = ()

    event_id: str
    queue_id: str
    version: int = 1
    occurred_at: datetime = Field(default_factory=utcnow)


class MessageReceived(Event):
    publishers = ("ingress", "notifier")
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
    # Set on the notifier's delivery reports: the queue id of the message reported on.
    # Reports carry mail_from "" too; this tells one of ours from any null-sender mail.
    report_of: str | None = None
    # What SPF and spamd said (None: no check ran, or an event from before this field).
    antispam: AntispamResults | None = None
    # The configuration revision policy decided the end of DATA under (None: from
    # before revisions, or a report the notifier made).
    config_revision: int | None = None


class Destination(_Model):
    """Where a group of recipients goes: the relay host, one domain's MX, or local."""

    kind: Literal["relay", "mx", "local"]
    domain: str = ""

    @property
    def key(self) -> str:
        return f"{self.kind}:{self.domain}"


class DeliveryScheduled(Event):
    """The queue handed these recipients to a delivery worker as one job.

    Written for retry rounds only: the first attempt of every recipient follows from
    MessageReceived itself (the queue answers it with the jobs and nothing else), and
    its results carry the job's destination. Histories from before that still hold
    one for attempt 1, and fold the same.
    """

    publishers = ("queue",)
    type: Literal["DeliveryScheduled"] = "DeliveryScheduled"
    job_id: str
    attempt: int
    destination: Destination
    recipients: tuple[str, ...]


class DeliveryTimings(_Model):
    """Where one attempt's time went (the mail log's `delays=a/b/c/d`)."""

    # When the queue handed out the job: its time in the job stream.
    scheduled_at: datetime | None = None
    setup_s: float = 0.0  # MX lookup, connect, greeting, EHLO, STARTTLS, AUTH
    transfer_s: float = 0.0  # MAIL FROM to the reply to the end of DATA


class _DeliveryResult(Event):
    publishers = ("delivery",)
    job_id: str
    attempt: int
    recipient: str
    remote_host: str = ""
    reply_code: int = 0
    reply_text: str = ""
    status: str = ""  # RFC 3463 enhanced status code
    tls_version: str | None = None
    worker: str = ""
    # None for results from before this field.
    timings: DeliveryTimings | None = None
    # The job's destination: the record of a first attempt, which has no
    # DeliveryScheduled. None for results from before this field.
    destination: Destination | None = None


class DeliverySucceeded(_DeliveryResult):
    type: Literal["DeliverySucceeded"] = "DeliverySucceeded"
    # Whether the receiving server offered DSN (RFC 3461), so took over the NOTIFY
    # duty; None for local delivery and for results from before this field.
    remote_dsn: bool | None = None


class DeliveryDeferred(_DeliveryResult):
    type: Literal["DeliveryDeferred"] = "DeliveryDeferred"


class DeliveryFailed(_DeliveryResult):
    type: Literal["DeliveryFailed"] = "DeliveryFailed"


def recipient_result_id(job_id: str, index: int) -> str:
    """The id of one recipient's result in a job: a re-attempted job gets the same ids,
    so the first worker's results are the ones the stream keeps."""
    return f"{job_id}.r{index}"


def attempt_result_id(job_id: str) -> str:
    """The id of a job's DeliveryAttempted (one per job, as above)."""
    return f"{job_id}.results"


class RecipientResult(_Model):
    """One recipient's outcome in a DeliveryAttempted."""

    recipient: str
    outcome: Literal["succeeded", "deferred", "failed"]
    reply_code: int = 0
    reply_text: str = ""
    status: str = ""  # RFC 3463 enhanced status code


class DeliveryAttempted(Event):
    """A worker's results for one job: every recipient's outcome, in the job's order.

    One event per SMTP transaction instead of one per recipient (ten recipients: one
    stored write and one queue input instead of ten). Written only for jobs whose
    queue reads it (`DeliveryJob.one_result`); a job from an older queue is answered
    with the per-recipient events, which `per_recipient` gives back exactly.
    """

    publishers = ("delivery",)
    type: Literal["DeliveryAttempted"] = "DeliveryAttempted"
    job_id: str
    attempt: int
    results: tuple[RecipientResult, ...]
    remote_host: str = ""
    tls_version: str | None = None
    worker: str = ""
    timings: DeliveryTimings | None = None
    destination: Destination | None = None
    # Whether the server offered DSN (RFC 3461); None when none was reached.
    remote_dsn: bool | None = None

    def per_recipient(self) -> tuple[DeliverySucceeded | DeliveryDeferred | DeliveryFailed, ...]:
        """The same facts as the per-recipient events (their ids too), one by one."""
        out: list[DeliverySucceeded | DeliveryDeferred | DeliveryFailed] = []
        for index, result in enumerate(self.results):
            fields: dict[str, Any] = {
                "event_id": recipient_result_id(self.job_id, index),
                "queue_id": self.queue_id,
                "occurred_at": self.occurred_at,
                "job_id": self.job_id,
                "attempt": self.attempt,
                "recipient": result.recipient,
                "remote_host": self.remote_host,
                "reply_code": result.reply_code,
                "reply_text": result.reply_text,
                "status": result.status,
                "tls_version": self.tls_version,
                "worker": self.worker,
                "timings": self.timings,
                "destination": self.destination,
            }
            if result.outcome == "succeeded":
                out.append(DeliverySucceeded(**fields, remote_dsn=self.remote_dsn))
            elif result.outcome == "deferred":
                out.append(DeliveryDeferred(**fields))
            else:
                out.append(DeliveryFailed(**fields))
        return tuple(out)


class RecipientOutcome(_Model):
    """What became of one recipient, as much as a delivery report needs (RFC 3464)."""

    address: str
    action: Literal["failed", "delayed", "delivered", "relayed", "expanded"]
    status: str  # RFC 3463, e.g. 5.1.1; 4.4.7 for an expired recipient
    remote_host: str = ""
    diagnostic: str = ""  # the remote reply, e.g. "550 5.1.1 No such user"
    last_attempt_at: datetime | None = None


class MessageDelayed(Event):
    """Emitted once by the queue when warn_after has passed with recipients still pending."""

    publishers = ("queue",)
    type: Literal["MessageDelayed"] = "MessageDelayed"
    recipients: tuple[str, ...]
    outcomes: tuple[RecipientOutcome, ...] = ()
    will_retry_until: datetime | None = None


class MessageExpired(Event):
    """bounce_after has passed: these recipients fail as expired (4.4.7)."""

    publishers = ("queue",)
    type: Literal["MessageExpired"] = "MessageExpired"
    recipients: tuple[str, ...]
    outcomes: tuple[RecipientOutcome, ...] = ()


class RecipientsFailed(Event):
    """Emitted by the queue once per delivery attempt round for the recipients that
    failed permanently in it, so one failure report covers them together."""

    publishers = ("queue",)
    type: Literal["RecipientsFailed"] = "RecipientsFailed"
    attempt: int
    outcomes: tuple[RecipientOutcome, ...]


class RecipientsDelivered(Event):
    """Emitted by the queue per attempt round only for delivered recipients that asked
    for NOTIFY=SUCCESS (action "delivered", or "relayed" to a server without DSN)."""

    publishers = ("queue",)
    type: Literal["RecipientsDelivered"] = "RecipientsDelivered"
    attempt: int
    outcomes: tuple[RecipientOutcome, ...]


class ReportSent(Event):
    """The notifier's answer to a report-triggering event of this message.

    The queue keeps the body (RET=FULL needs it) until every MessageDelayed,
    MessageExpired, RecipientsFailed and RecipientsDelivered it emitted has one.
    `report_queue_id` is None when no report was due (null sender, NOTIFY=NEVER).
    """

    publishers = ("notifier",)
    type: Literal["ReportSent"] = "ReportSent"
    trigger_event_id: str
    kind: Literal["failure", "delay", "success", "expiry"]
    report_queue_id: str | None = None


class MessageCompleted(Event):
    """Every recipient is final.

    The fold knows that from the results alone, so the queue writes this only where
    the log would not otherwise say it: a null-sender message that expired (no
    MessageExpired, since no report is due) lists its expired recipients here.
    Histories from before that hold one for every completed message.
    """

    publishers = ("queue",)
    type: Literal["MessageCompleted"] = "MessageCompleted"
    delivered: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    # Recipients that failed because bounce_after passed (also listed in `failed`). Only
    # a null-sender message carries them here: it gets no MessageExpired (no report).
    expired: tuple[str, ...] = ()


class MessageHeld(Event):
    """An operator put the message on hold (`mailbus queue hold`): no new attempts."""

    publishers = ("queue",)
    type: Literal["MessageHeld"] = "MessageHeld"
    operator: str = ""


class MessageReleased(Event):
    """An operator released a held message; deferred recipients are attempted at once."""

    publishers = ("queue",)
    type: Literal["MessageReleased"] = "MessageReleased"
    operator: str = ""


class MessageDeleted(Event):
    """An operator removed the message from the queue; no report is sent for it."""

    publishers = ("queue",)
    type: Literal["MessageDeleted"] = "MessageDeleted"
    operator: str = ""
    # Recipients that were still undelivered when the message was deleted.
    recipients: tuple[str, ...] = ()


def _members(union: object) -> tuple[type[Any], ...]:
    """The classes of an `Annotated[A | B | ..., Field(discriminator=...)]` union.

    The union is the one list of a family's types: parsing reads it, and
    EVENT_TYPES and ACCESS_EVENT_TYPES are read off it, never written out again.
    """
    members, *_ = get_args(union)
    return get_args(members)


# A new event type is its class above and a member here; its golden sample follows
# (tests/unit/test_events_golden.py fails for a member without one), then the grant
# of the service that publishes it (permissions.py) and the consumer that reads it.
AnyEvent = Annotated[
    MessageReceived
    | DeliveryScheduled
    | DeliverySucceeded
    | DeliveryDeferred
    | DeliveryFailed
    | DeliveryAttempted
    | MessageDelayed
    | MessageExpired
    | RecipientsFailed
    | RecipientsDelivered
    | ReportSent
    | MessageCompleted
    | MessageHeld
    | MessageReleased
    | MessageDeleted,
    Field(discriminator="type"),
]

EVENT_TYPES: tuple[type[Event], ...] = _members(AnyEvent)

_adapter: TypeAdapter[AnyEvent] = TypeAdapter(AnyEvent)


def parse_event(data: bytes | str) -> AnyEvent:
    return _adapter.validate_json(data)


def encode(model: BaseModel) -> bytes:
    return model.model_dump_json().encode()


def event_type(event: Event | AccessEvent) -> str:
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
    # The queue that wrote this reads one DeliveryAttempted per job; a job without it
    # (an older queue's, in a rolling upgrade) gets one result event per recipient.
    one_result: bool = False


# --- access events: facts about sessions and logins, not about one message -----------


class AccessEvent(_Model):
    """Published to MAILBUS_ACCESS under `subjects.access_subject(type)`."""

    publishers: ClassVar[tuple[str, ...]] = ()  # as for Event

    event_id: str
    version: int = 1
    occurred_at: datetime = Field(default_factory=utcnow)


class Pop3LoginSucceeded(AccessEvent):
    """A user logged in over POP3; policy turns it into a POP3-before-SMTP grant.

    `occurred_at` is the time of the login: the grant runs from then, not from
    whenever policy happens to read the event.
    """

    publishers = ("ingress",)
    type: Literal["Pop3LoginSucceeded"] = "Pop3LoginSucceeded"
    client_ip: str
    user: str
    listener: str = ""
    session_id: str = ""


class ClientBlocked(AccessEvent):
    """Policy blocked a client address (e.g. a directory harvest); the history of blocks.

    The live block is a key in the blocks bucket; this event is what stays after it
    expired or was lifted. `start` is when the block began, `end` when it runs out.
    """

    publishers = ("policy",)
    type: Literal["ClientBlocked"] = "ClientBlocked"
    client_ip: str
    reason: str
    rule: str
    start: datetime
    end: datetime


class ClientUnblocked(AccessEvent):
    """An operator lifted a block before its end (`mailbus blocks remove`)."""

    publishers = ("policy",)
    type: Literal["ClientUnblocked"] = "ClientUnblocked"
    client_ip: str
    block_start: datetime | None = None  # the block that was lifted, if one was found
    operator: str = ""


AnyAccessEvent = Annotated[
    Pop3LoginSucceeded | ClientBlocked | ClientUnblocked, Field(discriminator="type")
]

ACCESS_EVENT_TYPES: tuple[type[AccessEvent], ...] = _members(AnyAccessEvent)

_access_adapter: TypeAdapter[AnyAccessEvent] = TypeAdapter(AnyAccessEvent)


def parse_access_event(data: bytes | str) -> AnyAccessEvent:
    return _access_adapter.validate_json(data)
