"""The report-triggering events the queue emits for the notifier.

Each has a deterministic id, and each recipient is reported once: the state
remembers who is already covered, so a redelivered input or a rebuilt state
derives nothing new. None of them exists for a null-sender message (RFC 3461
never reports on a report, and the queue must not wait for answers that the
notifier will not send), except for our own reports (`report_of` set): their
failure goes once to the postmaster, which the notifier decides.
"""

from __future__ import annotations

from datetime import datetime

from libs.common.contract.events import (
    MessageDelayed,
    MessageExpired,
    RecipientOutcome,
    RecipientsDelivered,
    RecipientsFailed,
)
from services.queue.core.aggregate import MessageState, RecipientState, expiry_status
from services.queue.core.timers import Timing
from services.queue.core.transitions import RecipientStatus

ReportEvent = MessageDelayed | MessageExpired | RecipientsFailed | RecipientsDelivered


def delayed_event_id(queue_id: str) -> str:
    return f"{queue_id}.delayed"


def expired_event_id(queue_id: str) -> str:
    return f"{queue_id}.expired"


def round_event_id(state: MessageState, attempt: int, what: str) -> str:
    """`<qid>.a<n>.failed` first; should a round be reported in parts (a crash in the
    middle of scheduling it), the later parts get `.2`, `.3`, ..."""
    base = f"{state.queue_id}.a{attempt}.{what}"
    earlier = sum(1 for r in state.reports if r == base or r.startswith(base + "."))
    return base if earlier == 0 else f"{base}.{earlier + 1}"


def reports_wanted(state: MessageState) -> bool:
    received = state.received
    if received is None:
        return False
    return received.mail_from != "" or received.report_of is not None


def _outcome(rcpt: RecipientState, action: str, status: str) -> RecipientOutcome:
    return RecipientOutcome.model_validate(
        {
            "address": rcpt.address,
            "action": action,
            "status": status,
            "remote_host": rcpt.remote_host,
            "diagnostic": rcpt.diagnostic,
            "last_attempt_at": rcpt.last_attempt_at,
        }
    )


def _round_done(state: MessageState, attempt: int) -> bool:
    return not any(
        r.status is RecipientStatus.SCHEDULED and r.attempt == attempt for r in state.recipients
    )


def _wants_success(state: MessageState, address: str) -> bool:
    assert state.received is not None
    return any(
        r.address == address and "SUCCESS" in (n.upper() for n in r.notify)
        for r in state.received.recipients
    )


# The remote host a local delivery's results name (delivery's LocalDelivery).
LOCAL_HOST = "mailbox"


def _delivered_action(state: MessageState, rcpt: RecipientState) -> str:
    job = state.job(rcpt.job_id or "")
    if job is not None and job.destination is not None:
        local = job.destination.kind == "local"
    else:  # a first attempt's result from a worker older than the result's destination
        local = rcpt.remote_host == LOCAL_HOST
    # Handed to another MTA that was not asked for DSNs: RFC 3461 calls it "relayed".
    return "delivered" if local else "relayed"


def round_reports(state: MessageState, now: datetime) -> list[ReportEvent]:
    """RecipientsFailed / RecipientsDelivered for every finished round with news."""
    if not reports_wanted(state):
        return []
    out: list[ReportEvent] = []
    attempts = sorted({r.attempt for r in state.recipients if r.final and r.attempt > 0})
    for attempt in attempts:
        if not _round_done(state, attempt):
            continue
        failed = [
            r
            for r in state.with_status(RecipientStatus.FAILED)
            if r.attempt == attempt and not r.expired and r.address not in state.reported_failed
        ]
        if failed:
            out.append(
                RecipientsFailed(
                    event_id=round_event_id(state, attempt, "failed"),
                    queue_id=state.queue_id,
                    occurred_at=now,
                    attempt=attempt,
                    outcomes=tuple(_outcome(r, "failed", r.reply_status) for r in failed),
                )
            )
        delivered = [
            r
            for r in state.with_status(RecipientStatus.DELIVERED)
            if r.attempt == attempt
            and r.address not in state.reported_delivered
            and _wants_success(state, r.address)
            # A server that offers DSN got the NOTIFY: the success report is its to send.
            and not r.remote_dsn
        ]
        if delivered:
            out.append(
                RecipientsDelivered(
                    event_id=round_event_id(state, attempt, "delivered"),
                    queue_id=state.queue_id,
                    occurred_at=now,
                    attempt=attempt,
                    outcomes=tuple(
                        _outcome(r, _delivered_action(state, r), r.reply_status or "2.0.0")
                        for r in delivered
                    ),
                )
            )
    return out


def delay_warning(state: MessageState, now: datetime, timing: Timing) -> MessageDelayed | None:
    waiting = [r for r in state.recipients if not r.final]
    if state.delayed or not waiting or not reports_wanted(state) or state.arrival is None:
        return None
    return MessageDelayed(
        event_id=delayed_event_id(state.queue_id),
        queue_id=state.queue_id,
        occurred_at=now,
        recipients=tuple(r.address for r in waiting),
        outcomes=tuple(_outcome(r, "delayed", r.reply_status or "4.0.0") for r in waiting),
        will_retry_until=state.arrival + timing.bounce_after,
    )


def expiry(state: MessageState, now: datetime) -> MessageExpired | None:
    waiting = [r for r in state.recipients if not r.final]
    if not waiting or not reports_wanted(state):
        return None
    return MessageExpired(
        event_id=expired_event_id(state.queue_id),
        queue_id=state.queue_id,
        occurred_at=now,
        recipients=tuple(r.address for r in waiting),
        outcomes=tuple(_outcome(r, "failed", expiry_status(r)) for r in waiting),
    )
