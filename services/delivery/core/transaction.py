"""One SMTP transaction's replies -> one result per recipient, and the result events.

The adapter records what the server said (MAIL, each RCPT, DATA) and, if the
conversation broke off, a stand-in reply for the break; this module alone
decides which reply speaks for which recipient:

- MAIL refused: that reply for everyone;
- RCPT refused: that reply for that recipient;
- RCPT accepted: the DATA reply (or, without one, the break) for that recipient;
- a recipient the conversation never reached: the break.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from libs.common.contract.events import (
    DeliveryAttempted,
    DeliveryDeferred,
    DeliveryFailed,
    DeliveryJob,
    DeliverySucceeded,
    DeliveryTimings,
    RecipientResult,
    attempt_result_id,
    recipient_result_id,
)
from services.delivery.core.replies import PROTOCOL_ERROR, Reply

# Should a transaction end without a break and without a reply for someone, this
# stands in: a bug must defer, never drop or bounce.
_NO_REPLY = Reply(0, "no reply recorded for this recipient", PROTOCOL_ERROR)

ResultEvent = DeliverySucceeded | DeliveryDeferred | DeliveryFailed | DeliveryAttempted


@dataclass(frozen=True)
class Transcript:
    """What one SMTP transaction got back; `None` = the step was not reached."""

    mail: Reply | None = None
    rcpts: tuple[Reply, ...] = ()
    data: Reply | None = None
    # Why the conversation stopped early (connect failure, timeout, TLS missing, ...).
    broken: Reply | None = None

    @property
    def accepted(self) -> tuple[int, ...]:
        return tuple(i for i, r in enumerate(self.rcpts) if r.outcome == "succeeded")

    @property
    def needs_data(self) -> bool:
        """DATA is sent once, only if at least one recipient was accepted."""
        return bool(self.accepted)


def reply_for(transcript: Transcript, index: int) -> Reply:
    fallback = transcript.broken or _NO_REPLY
    if transcript.mail is None:
        return fallback
    if transcript.mail.outcome != "succeeded":
        return transcript.mail
    if index >= len(transcript.rcpts):
        return fallback
    rcpt = transcript.rcpts[index]
    if rcpt.outcome != "succeeded":
        return rcpt
    return transcript.data or fallback


def replies_for(transcript: Transcript, count: int) -> list[Reply]:
    return [reply_for(transcript, i) for i in range(count)]


def result_event_id(job_id: str, index: int) -> str:
    """One id per (job, recipient index): a re-attempted job re-publishes the same ids,
    so the first worker's results are the ones the stream keeps."""
    return recipient_result_id(job_id, index)


def results_recorded(job: DeliveryJob, found: set[str]) -> bool:
    """Whether these event ids hold the job's results, in either form: a worker of the
    previous version may have answered a job that asks for one DeliveryAttempted."""
    if attempt_result_id(job.job_id) in found:
        return True
    return all(result_event_id(job.job_id, i) in found for i in range(len(job.recipients)))


_EVENT_TYPES: dict[str, type[DeliverySucceeded | DeliveryDeferred | DeliveryFailed]] = {
    "succeeded": DeliverySucceeded,
    "deferred": DeliveryDeferred,
    "failed": DeliveryFailed,
}


def result_events(
    job: DeliveryJob,
    replies: Sequence[Reply],
    *,
    remote_host: str,
    tls_version: str | None,
    worker: str,
    now: datetime,
    remote_dsn: bool | None = None,
    timings: DeliveryTimings | None = None,
) -> list[ResultEvent]:
    """`remote_dsn`: whether the server offered DSN; the queue needs it for successes
    (a requested success report says "relayed" when it did not). One DeliveryAttempted
    for a job that asks for it (`one_result`), else one event per recipient."""
    if job.one_result:
        results = tuple(
            RecipientResult(
                recipient=recipient.address,
                outcome=reply.outcome,
                reply_code=reply.code,
                reply_text=reply.text,
                status=reply.enhanced_status,
            )
            for recipient, reply in zip(job.recipients, replies, strict=True)
        )
        attempted = DeliveryAttempted(
            event_id=attempt_result_id(job.job_id),
            queue_id=job.queue_id,
            occurred_at=now,
            job_id=job.job_id,
            attempt=job.attempt,
            results=results,
            remote_host=remote_host,
            tls_version=tls_version,
            worker=worker,
            timings=timings,
            destination=job.destination,
            remote_dsn=remote_dsn,
        )
        return [attempted]
    events: list[ResultEvent] = []
    for index, (recipient, reply) in enumerate(zip(job.recipients, replies, strict=True)):
        cls = _EVENT_TYPES[reply.outcome]
        event = cls(
            event_id=result_event_id(job.job_id, index),
            queue_id=job.queue_id,
            occurred_at=now,
            job_id=job.job_id,
            attempt=job.attempt,
            recipient=recipient.address,
            remote_host=remote_host,
            reply_code=reply.code,
            reply_text=reply.text,
            status=reply.enhanced_status,
            tls_version=tls_version,
            worker=worker,
            timings=timings,
            destination=job.destination,
        )
        if isinstance(event, DeliverySucceeded) and remote_dsn is not None:
            event = event.model_copy(update={"remote_dsn": remote_dsn})
        events.append(event)
    return events
