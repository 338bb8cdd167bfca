"""The machine-readable part: message/delivery-status fields (RFC 3464 section 2).

Field values stay ASCII, as the RFC asks; only an address that cannot be written
in ASCII makes the part message/global-delivery-status with "utf-8" addresses
(RFC 6533).
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


def message_fields(hostname: str, queue_id: str, arrival: datetime, envid: str | None) -> Fields:
    fields: Fields = [("Reporting-MTA", f"dns; {hostname}")]
    # Extension field (RFC 3464 section 2.4), like Postfix's X-Postfix-Queue-ID.
    fields.append(("X-Mailbus-Queue-ID", queue_id))
    if envid:
        fields.append(("Original-Envelope-Id", ascii_text(envid)))
    fields.append(("Arrival-Date", format_datetime(arrival)))
    return fields


def recipient_fields(rcpt: ReportedRecipient, will_retry_until: datetime | None = None) -> Fields:
    outcome = rcpt.outcome
    fields: Fields = []
    if rcpt.orcpt:
        fields.append(("Original-Recipient", typed_address(rcpt.orcpt)))
    fields.append(("Final-Recipient", f"{address_type(outcome.address)}; {outcome.address}"))
    fields.append(("Action", outcome.action))
    fields.append(("Status", status_of(outcome)))
    remote = remote_mta(outcome.remote_host)
    if remote:
        fields.append(("Remote-MTA", f"dns; {remote}"))
    if outcome.diagnostic:
        fields.append(("Diagnostic-Code", f"smtp; {ascii_text(outcome.diagnostic)}"))
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


def remote_mta(remote_host: str) -> str:
    """ "mx.example.net[192.0.2.9]:25" -> "mx.example.net"; a bare address in brackets."""
    host = remote_host.strip()
    if not host:
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
