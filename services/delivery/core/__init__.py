"""The delivery worker's pure core: reply classification, result events, TLS choice."""

from services.delivery.core.plan import retry_in_plain_text, tls_step, unsupported
from services.delivery.core.replies import Outcome, Reply, classify, enhanced_status
from services.delivery.core.transaction import (
    Transcript,
    replies_for,
    reply_for,
    result_event_id,
    result_events,
    results_recorded,
)

__all__ = [
    "Outcome",
    "Reply",
    "Transcript",
    "classify",
    "enhanced_status",
    "replies_for",
    "reply_for",
    "result_event_id",
    "result_events",
    "results_recorded",
    "retry_in_plain_text",
    "tls_step",
    "unsupported",
]
