"""A strict reader of delivery reports (RFC 6522 multipart/report, RFC 3464 fields).

Written for the tests, from the RFCs, to refuse what a lenient parser lets
pass: `read_report` raises `ReportError` naming the first rule broken, and
returns the per-message and per-recipient fields otherwise. It checks

- the report's MIME shape: multipart/report; report-type=delivery-status, a
  human-readable first part, the (global-)delivery-status second, and at most
  one third part, the original or its header;
- every field name is one RFC 3464 defines for its block, or an extension (X-);
- each field's syntax: "type; value" where one is due, dns names for the MTAs,
  a status whose class matches the action, RFC 5322 dates;
- Diagnostic-Code typed smtp holds an SMTP reply (code first), any other
  type is an extension (X-...);
- Reporting-MTA, Final-Recipient, Action and Status are present.
"""

from __future__ import annotations

import email
import re
from dataclasses import dataclass
from email.message import Message
from email.utils import parsedate_to_datetime

MESSAGE_FIELDS = {
    "original-envelope-id",
    "reporting-mta",
    "dsn-gateway",
    "received-from-mta",
    "arrival-date",
}
RECIPIENT_FIELDS = {
    "original-recipient",
    "final-recipient",
    "action",
    "status",
    "remote-mta",
    "diagnostic-code",
    "last-attempt-date",
    "final-log-id",
    "will-retry-until",
}
# The status classes each action may carry: a failure is permanent (5), or the last
# temporary status of a recipient that ran out of time (4.4.7, as Postfix writes it).
ACTIONS = {"failed": "45", "delayed": "4", "delivered": "2", "relayed": "2", "expanded": "2"}
ADDRESS_TYPES = {"rfc822", "utf-8"}
STATUS = re.compile(r"([245])\.([0-9]{1,3})\.([0-9]{1,3})")
SMTP_REPLY = re.compile(r"[2-5][0-9]{2}(?:[ -].*)?")
LABEL = r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)"
DNS_NAME = re.compile(rf"{LABEL}(?:\.{LABEL})*\.?")
ADDRESS_LITERAL = re.compile(r"\[(?:[0-9.]+|IPv6:[0-9A-Fa-f:.]+)\]")
EXTENSION = re.compile(r"[Xx]-[A-Za-z0-9-]+")
DATE_FIELDS = {"arrival-date", "last-attempt-date", "will-retry-until"}


class ReportError(AssertionError):
    pass


@dataclass
class Report:
    per_message: dict[str, str]
    per_recipient: list[dict[str, str]]
    third_part: str | None  # its content type


def read_report(raw: bytes) -> Report:
    msg = email.message_from_bytes(raw)
    _require(msg.get_content_type() == "multipart/report", "not multipart/report")
    _require(msg.get_param("report-type") == "delivery-status", "report-type")
    _require(msg.is_multipart(), "multipart/report without parts")
    payload = msg.get_payload()
    assert isinstance(payload, list)
    parts = [p for p in payload if isinstance(p, Message)]
    _require(len(parts) in (2, 3), f"{len(parts)} parts")
    _require(parts[0].get_content_maintype() in ("text", "multipart"), "first part")
    status_type = parts[1].get_content_type()
    _require(
        status_type in ("message/delivery-status", "message/global-delivery-status"),
        f"second part is {status_type}",
    )
    third = parts[2].get_content_type() if len(parts) == 3 else None
    _require(
        third in (None, "message/rfc822", "text/rfc822-headers", "message/global-headers"),
        f"third part is {third}",
    )
    blocks = _blocks(parts[1])
    _require(len(blocks) >= 2, "no per-recipient block")
    per_message = _fields(blocks[0], MESSAGE_FIELDS, "per-message")
    _check_message(per_message)
    per_recipient = [_fields(b, RECIPIENT_FIELDS, "per-recipient") for b in blocks[1:]]
    for fields in per_recipient:
        _check_recipient(fields)
    return Report(per_message, per_recipient, third)


def _require(ok: bool, what: str) -> None:
    if not ok:
        raise ReportError(what)


def _blocks(part: Message) -> list[Message]:
    payload = part.get_payload()
    if isinstance(payload, list):
        return [b for b in payload if isinstance(b, Message)]
    # Not parsed into blocks: split the text at blank lines ourselves.
    text = str(payload).replace("\r\n", "\n").strip("\n")
    return [email.message_from_string(chunk + "\n") for chunk in re.split(r"\n\s*\n", text)]


def _fields(block: Message, allowed: set[str], which: str) -> dict[str, str]:
    found: dict[str, str] = {}
    for name, value in block.items():
        key = name.lower()
        _require(key in allowed or EXTENSION.fullmatch(name) is not None, f"{which}: {name}")
        _require(key not in found, f"{which}: {name} twice")
        found[key] = " ".join(str(value).split())
    return found


def _typed(value: str, what: str) -> tuple[str, str]:
    kind, sep, rest = value.partition(";")
    _require(bool(sep) and bool(kind.strip()) and bool(rest.strip()), f"{what}: {value!r}")
    return kind.strip().lower(), rest.strip()


def _mta(value: str, what: str) -> None:
    kind, name = _typed(value, what)
    _require(kind == "dns", f"{what}: type {kind}")
    # A fully qualified name (so never "mailbox" or "localhost"), or an address literal.
    fqdn = DNS_NAME.fullmatch(name) is not None and "." in name.rstrip(".")
    _require(fqdn or ADDRESS_LITERAL.fullmatch(name) is not None, f"{what}: {name!r}")


def _dates(fields: dict[str, str]) -> None:
    for key in DATE_FIELDS & fields.keys():
        try:
            parsedate_to_datetime(fields[key])
        except (TypeError, ValueError):
            raise ReportError(f"{key}: {fields[key]!r}") from None


def _check_message(fields: dict[str, str]) -> None:
    _require("reporting-mta" in fields, "no Reporting-MTA")
    _mta(fields["reporting-mta"], "Reporting-MTA")
    if "received-from-mta" in fields:
        _mta(fields["received-from-mta"], "Received-From-MTA")
    _dates(fields)


def _check_recipient(fields: dict[str, str]) -> None:
    for required in ("final-recipient", "action", "status"):
        _require(required in fields, f"no {required}")
    for key in ("final-recipient", "original-recipient"):
        if key in fields:
            kind, _ = _typed(fields[key], key)
            _require(kind in ADDRESS_TYPES, f"{key}: address type {kind}")
    action = fields["action"].lower()
    _require(action in ACTIONS, f"Action: {action}")
    status = STATUS.fullmatch(fields["status"])
    _require(status is not None, f"Status: {fields['status']!r}")
    assert status is not None
    _require(status.group(1) in ACTIONS[action], f"Status {fields['status']} for {action}")
    if "remote-mta" in fields:
        _mta(fields["remote-mta"], "Remote-MTA")
    if "diagnostic-code" in fields:
        kind, text = _typed(fields["diagnostic-code"], "Diagnostic-Code")
        if kind == "smtp":
            _require(SMTP_REPLY.fullmatch(text) is not None, f"smtp diagnostic: {text!r}")
        else:
            _require(EXTENSION.fullmatch(kind) is not None, f"diagnostic type {kind}")
    _dates(fields)
