"""The machine-readable part: message/delivery-status fields (RFC 3464 section 2).

Field values stay ASCII, as the RFC asks; only an address that cannot be written
in ASCII makes the part message/global-delivery-status with "utf-8" addresses
(RFC 6533). As strict readers (and Postfix) expect:

- `Diagnostic-Code: smtp;` only before a reply a remote server sent; our own
  diagnostics (no route, null MX, connect, TLS or login trouble, time-outs)
  are `X-Mailbus;`, an extension type (section 2.3.6, like Postfix's X-Postfix);
- no Remote-MTA for mail put in a local mailbox: there was no remote MTA;
- Original-Recipient for every recipient (the ORCPT given, else the address),
  and the envelope sender as X-Mailbus-Sender (Postfix's X-Postfix-Sender),
  since the report's To: need not be that sender.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import datetime
from email.utils import format_datetime

from libs.common.contract.events import RecipientOutcome

from .decide import ReportedRecipient

Fields = list[tuple[str, str]]

_HOST_PORT = re.compile(r"^(?P<name>[^\[\]:]*)(?:\[(?P<ip>[^\]]*)\])?(?::\d+)?$")
_DEFAULT_STATUS = {"failed": "5.0.0", "delayed": "4.0.0"}
# How the queue writes a remote server's reply: its code first ("550 5.1.1 ..."); a
# diagnostic of ours is text alone (the stand-in replies have code 0).
_SMTP_REPLY = re.compile(r"[2-5][0-9]{2}(?:[ -]|$)")
# remote_host of a delivery into the mailbox store on the bus (delivery's local store).
LOCAL_MAILBOX = "mailbox"
OUR_DIAGNOSTIC_TYPE = "X-Mailbus"


def message_fields(
    hostname: str, queue_id: str, arrival: datetime, envid: str | None, sender: str = ""
) -> Fields:
    fields: Fields = [("Reporting-MTA", f"dns; {hostname}")]
    # Extension fields (RFC 3464 section 2.4), like Postfix's X-Postfix-Queue-ID and
    # X-Postfix-Sender.
    fields.append(("X-Mailbus-Queue-ID", queue_id))
    if sender:
        fields.append(("X-Mailbus-Sender", f"{address_type(sender)}; {ascii_text(sender)}"))
    if envid:
        fields.append(("Original-Envelope-Id", ascii_text(envid)))
    fields.append(("Arrival-Date", format_datetime(arrival)))
    return fields


def recipient_fields(rcpt: ReportedRecipient, will_retry_until: datetime | None = None) -> Fields:
    outcome = rcpt.outcome
    fields: Fields = []
    original = rcpt.orcpt or outcome.address
    fields.append(("Original-Recipient", typed_address(original)))
    fields.append(("Final-Recipient", f"{address_type(outcome.address)}; {outcome.address}"))
    fields.append(("Action", outcome.action))
    fields.append(("Status", status_of(outcome)))
    remote = remote_mta(outcome.remote_host)
    if remote:
        fields.append(("Remote-MTA", f"dns; {remote}"))
    if outcome.diagnostic:
        fields.append(("Diagnostic-Code", diagnostic_code(outcome.diagnostic)))
    if outcome.last_attempt_at is not None:
        fields.append(("Last-Attempt-Date", format_datetime(outcome.last_attempt_at)))
    if outcome.action == "delayed" and will_retry_until is not None:
        fields.append(("Will-Retry-Until", format_datetime(will_retry_until)))
    return fields


def needs_global(recipients: Sequence[ReportedRecipient]) -> bool:
    return not all(r.outcome.address.isascii() and (r.orcpt or "").isascii() for r in recipients)


def status_of(outcome: RecipientOutcome) -> str:
    if re.fullmatch(r"[245]\.\d{1,3}\.\d{1,3}", outcome.status):
        return outcome.status
    return _DEFAULT_STATUS.get(outcome.action, "2.0.0")


def address_type(address: str) -> str:
    return "rfc822" if address.isascii() else "utf-8"


def typed_address(orcpt: str) -> str:
    kind, sep, address = orcpt.partition(";")
    if sep and kind.strip():
        return f"{kind.strip()}; {address.strip()}"
    return f"{address_type(orcpt)}; {orcpt.strip()}"


def diagnostic_code(diagnostic: str) -> str:
    text = ascii_text(diagnostic)
    kind = "smtp" if _SMTP_REPLY.match(text) else OUR_DIAGNOSTIC_TYPE
    return f"{kind}; {text}"


def remote_mta(remote_host: str) -> str:
    """ "mx.example.net[192.0.2.9]:25" -> "mx.example.net"; a bare address in brackets;
    nothing for a local mailbox."""
    host = remote_host.strip()
    if not host or host == LOCAL_MAILBOX:
        return ""
    found = _HOST_PORT.match(host)
    if found is None:
        return ascii_text(host)
    if found.group("name"):
        return found.group("name")
    ip = found.group("ip")
    return f"[{ip}]" if ip else ascii_text(host)


def ascii_text(value: str) -> str:
    # Field values are ASCII text on one logical line; replies can carry anything.
    flat = " ".join(value.split())
    return flat.encode("ascii", "replace").decode("ascii")
