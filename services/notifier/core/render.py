"""One report as a multipart/report message (RFC 6522) built with the `email` package.

Parts: the human-readable text in the plan's language, the delivery-status
fields, and the original message (message/rfc822) or its header
(text/rfc822-headers). What is attached:

- delay and success reports: the header only (RFC 3461 section 4.3);
- failures with RET=HDRS: the header; with RET=FULL: the whole message up to
  FULL_LIMIT; without RET: the whole message up to DEFAULT_FULL_LIMIT;
- nothing when the body is no longer in the store.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import datetime
from email import policy as email_policy
from email.generator import BytesGenerator
from email.headerregistry import Address
from email.message import EmailMessage, Message, MIMEPart
from email.parser import BytesParser
from email.policy import EmailPolicy
from email.utils import format_datetime
from typing import Literal

from libs.common.contract.events import MessageReceived

from . import dsn
from .decide import ReportPlan
from .original import OriginalHeaders, header_block, read_headers
from .text import TextFacts, Translator, human_text, subject
from .triggers import Trigger

DEFAULT_FULL_LIMIT = 256 * 1024
FULL_LIMIT = 10 * 1024 * 1024
FROM_NAME = "Mail Delivery System"

Attached = Literal["full", "headers", "none"]

# refold_source="none": the original's header lines are copied, never re-folded.
_POLICY: EmailPolicy[EmailMessage] = email_policy.SMTP.clone(refold_source="none")
_POLICY_UTF8: EmailPolicy[EmailMessage] = email_policy.SMTPUTF8.clone(refold_source="none")


class _Generator(BytesGenerator):
    # The stdlib writes message/delivery-status as its blocks of fields but knows no
    # message/global-delivery-status (RFC 6533), which has the same shape in UTF-8.
    _handle_message_global_delivery_status = BytesGenerator._handle_message_delivery_status  # type: ignore[attr-defined]


@dataclass(frozen=True)
class ReportInput:
    plan: ReportPlan
    trigger: Trigger
    received: MessageReceived
    original: bytes | None  # None when the body is gone from the store
    hostname: str
    report_queue_id: str
    now: datetime


def attachment(plan: ReportPlan, received: MessageReceived, original: bytes | None) -> Attached:
    if original is None:
        return "none"
    if plan.kind in ("delay", "success") or received.ret == "HDRS":
        return "headers"
    limit = FULL_LIMIT if received.ret == "FULL" else DEFAULT_FULL_LIMIT
    return "full" if len(original) <= limit else "headers"


def needs_utf8(inp: ReportInput) -> bool:
    """Whether the report can only travel with SMTPUTF8 (RFC 6531)."""
    attached = attachment(inp.plan, inp.received, inp.original)
    original_utf8 = inp.received.smtputf8 and attached != "none"
    return original_utf8 or not inp.plan.to.isascii() or dsn.needs_global(inp.plan.recipients)


def render(inp: ReportInput, tr: Translator) -> bytes:
    plan, received = inp.plan, inp.received
    original = inp.original
    headers = read_headers(original) if original is not None else OriginalHeaders()
    attached = attachment(plan, received, original)
    facts = TextFacts(
        hostname=inp.hostname,
        queue_id=received.queue_id,
        arrival=received.occurred_at,
        now=inp.now,
        subject=headers.subject,
        timezone=headers.timezone,
        will_retry_until=inp.trigger.will_retry_until,
        attached=attached,
        reported_sender=", ".join(r.address for r in received.recipients),
    )
    utf8 = needs_utf8(inp)
    policy = _POLICY_UTF8 if utf8 else _POLICY

    report = EmailMessage(policy=policy)
    report["From"] = Address(FROM_NAME, "MAILER-DAEMON", inp.hostname)
    report["To"] = _address(plan.to)
    report["Subject"] = subject(plan, tr, headers.subject)
    report["Date"] = format_datetime(inp.now)
    report["Message-ID"] = f"<{inp.report_queue_id}@{inp.hostname}>"
    if headers.message_id:
        report["In-Reply-To"] = headers.message_id
        report["References"] = headers.message_id
    report["Auto-Submitted"] = "auto-replied"
    report["MIME-Version"] = "1.0"
    report["Content-Type"] = "multipart/report; report-type=delivery-status"

    parts: list[Message | str] = [
        _text_part(human_text(plan, facts, tr), plan.language, policy),
        _status_part(inp, policy, utf8),
    ]
    if original is not None and attached != "none":
        parts.append(_original_part(original, attached, policy))
    report.set_payload(parts)
    report.set_boundary(_boundary(inp.report_queue_id, original))
    if original is not None and attached != "none" and not original.isascii():
        report["Content-Transfer-Encoding"] = "8bit"
    out = io.BytesIO()
    _Generator(out, policy=policy).flatten(report)
    return out.getvalue()


def _text_part(text: str, language: str, policy: EmailPolicy[EmailMessage]) -> MIMEPart:
    part = MIMEPart(policy=policy)
    part.set_content(text, charset="utf-8", cte="quoted-printable")
    part["Content-Language"] = language
    part["Content-Description"] = "Notification"
    return part


def _status_part(inp: ReportInput, policy: EmailPolicy[EmailMessage], utf8: bool) -> MIMEPart:
    received = inp.received
    groups = [
        dsn.message_fields(
            inp.hostname,
            received.queue_id,
            received.occurred_at,
            received.envid,
            received.mail_from,
        )
    ]
    groups += [dsn.recipient_fields(r, inp.trigger.will_retry_until) for r in inp.plan.recipients]
    global_status = utf8 and dsn.needs_global(inp.plan.recipients)
    part = MIMEPart(policy=policy)
    part["Content-Type"] = (
        "message/global-delivery-status" if global_status else "message/delivery-status"
    )
    part["Content-Description"] = "Delivery report"
    if global_status:
        part["Content-Transfer-Encoding"] = "8bit"
    blocks: list[Message | str] = [_block(group, policy) for group in groups]
    part.set_payload(blocks)
    return part


def _block(fields: dsn.Fields, policy: EmailPolicy[EmailMessage]) -> Message:
    block = Message(policy=policy)
    for name, value in fields:
        block[name] = value
    return block


def _original_part(
    original: bytes, attached: Attached, policy: EmailPolicy[EmailMessage]
) -> MIMEPart:
    part = MIMEPart(policy=policy)
    eight_bit = not original.isascii()
    if attached == "full":
        part["Content-Type"] = "message/rfc822"
        part["Content-Description"] = "Original message"
        # compat32 keeps the original's lines as they were: nothing is decoded or re-encoded.
        part.set_payload([BytesParser(policy=email_policy.compat32).parsebytes(original)])
    else:
        part["Content-Type"] = "text/rfc822-headers"
        part["Content-Description"] = "Message headers"
        # surrogateescape lets the generator write non-ASCII header bytes back unchanged.
        part.set_payload(header_block(original).decode("ascii", "surrogateescape"))
    if eight_bit:
        part["Content-Transfer-Encoding"] = "8bit"
    return part


def _address(address: str) -> Address | str:
    local, at, domain = address.rpartition("@")
    if not at:
        return address
    try:
        return Address(addr_spec=address)
    except (ValueError, IndexError):
        return Address(username=local, domain=domain)


def _boundary(report_id: str, original: bytes | None) -> str:
    # Deterministic, so rendering the same report twice gives the same bytes, and
    # checked against the original, which a boundary must never occur in.
    seed = report_id.encode()
    for _ in range(100):
        candidate = "=_mailbus_" + hashlib.sha256(seed).hexdigest()[:24]
        if original is None or candidate.encode() not in original:
            return candidate
        seed += b"+"
    raise ValueError("no boundary found")  # 100 hash collisions: not a real message
