"""The mail log's lines, built from what the services know: pure, no logging here.

Each line is what Postfix's daemon of the same role would write, queue id first,
so pflogsumm and fail2ban's stock postfix filters read them (docs/operations.md).
`MailLine.text` is the text form; `fields` holds the same facts, unescaped, for
the JSON form. Everything a client or a remote server chose (addresses, HELO
names, user names, replies) goes through `esc` before it reaches `text`: no
control character, no non-ASCII byte, and none of the characters that delimit
the field it sits in, so one line stays one line and its fields stay apart.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from libs.common.contract.events import (
    DeliveryAttempted,
    DeliveryDeferred,
    DeliveryFailed,
    DeliverySucceeded,
    Event,
    MessageDeleted,
    MessageExpired,
    MessageHeld,
    MessageReceived,
    MessageReleased,
)

NOQUEUE = "NOQUEUE"
# The client's name, where Postfix puts its reverse DNS name: mailbus does no
# reverse look-up, as Postfix writes when it has none.
UNKNOWN_HOST = "unknown"

# Delimiters per kind of field: inside <...>, inside a name before [ip], in (...).
IN_ANGLES = "<>, ;"
IN_NAME = "[]<>, ;"
IN_PARENS = "()"

# Postfix's words for policy stages, as in "reject: RCPT from ...".
_STAGE_WORDS = {
    "connect": "CONNECT",
    "helo": "HELO",
    "ehlo": "EHLO",
    "mail": "MAIL",
    "rcpt": "RCPT",
    "data": "END-OF-MESSAGE",
}

_REPORT_WORDS = {
    "failure": "sender non-delivery notification",
    "expiry": "sender non-delivery notification",
    "delay": "sender delay notification",
    "success": "sender delivery status notification",
}


def esc(value: str, delimiters: str = "") -> str:
    """`value` with backslash, control, non-ASCII and delimiter characters as \\xNN / \\uNNNN."""
    out: list[str] = []
    for char in value:
        code = ord(char)
        if 0x20 <= code < 0x7F and char != "\\" and char not in delimiters:
            out.append(char)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        else:
            out.append(f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
    return "".join(out)


@dataclass(frozen=True)
class MailLine:
    """One line of the mail log."""

    daemon: str  # Postfix's name for the role: smtpd, qmgr, smtp, bounce, postsuper...
    text: str  # after `mailbus/<daemon>[pid]: `
    fields: Mapping[str, object] = field(default_factory=dict)
    level: str = "info"  # info | warning


def client_text(ip: str) -> str:
    return f"{UNKNOWN_HOST}[{esc(ip, IN_NAME)}]"


def accepted(queue_id: str, client_ip: str, sasl_username: str | None) -> MailLine:
    """smtpd, once a message is durably queued."""
    text = f"{queue_id}: client={client_text(client_ip)}"
    if sasl_username:
        text += f", sasl_username={esc(sasl_username, IN_ANGLES)}"
    return MailLine(
        "smtpd",
        text,
        {
            "queue_id": queue_id,
            "event": "accepted",
            "client": client_ip,
            "sasl_username": sasl_username,
        },
    )


def rejected(
    stage: str,
    client_ip: str,
    reply: str,
    mail_from: str | None,
    rcpt: str | None,
    helo: str,
    rule: str = "",
    session_id: str = "",
    revision: int | None = None,
) -> MailLine:
    """smtpd's NOQUEUE reject line for a refusal by policy, naming the rule that decided
    and the configuration revision it decided under."""
    word = _STAGE_WORDS.get(stage, esc(stage.upper(), IN_NAME))
    text = f"{NOQUEUE}: reject: {word} from {client_text(client_ip)}: {esc(reply)}"
    details = []
    if mail_from is not None:
        details.append(f"from=<{esc(mail_from, IN_ANGLES)}>")
    if rcpt is not None:
        details.append(f"to=<{esc(rcpt, IN_ANGLES)}>")
    if helo:
        details.append(f"helo=<{esc(helo, IN_ANGLES)}>")
    if rule:
        details.append(f"rule={esc(rule, IN_ANGLES)}")
    if revision is not None:
        details.append(f"revision={revision}")
    if details:
        text += "; " + " ".join(details)
    return MailLine(
        "smtpd",
        text,
        {
            "queue_id": NOQUEUE,
            "event": "reject",
            "stage": stage,
            "client": client_ip,
            "reply": reply,
            "from": mail_from,
            "to": rcpt,
            "helo": helo,
            "rule": rule,
            "session": session_id,
            "revision": revision,
        },
    )


def sasl_failed(client_ip: str, mechanism: str, username: str | None) -> MailLine:
    """smtpd's warning for a failed AUTH, the line fail2ban's postfix-sasl jail counts."""
    mech = esc(mechanism.upper(), IN_NAME) or "UNKNOWN"
    text = f"warning: {client_text(client_ip)}: SASL {mech} authentication failed: bad credentials"
    if username:
        text += f", sasl_username={esc(username, IN_ANGLES)}"
    return MailLine(
        "smtpd",
        text,
        {
            "event": "sasl_failed",
            "client": client_ip,
            "mechanism": mechanism,
            "sasl_username": username,
        },
        level="warning",
    )


def pop3_login(user: str, client_ip: str, listener: str) -> MailLine:
    """A POP3 login, in Dovecot's words (`Login: user=<...>, rip=...`)."""
    return MailLine(
        "pop3d",
        f"Login: user=<{esc(user, IN_ANGLES)}>, rip={esc(client_ip, IN_NAME)}, "
        f"listener={esc(listener, IN_NAME)}",
        {"event": "pop3_login", "user": user, "client": client_ip, "listener": listener},
    )


def blocked(client_ip: str, reason: str, rule: str, until: datetime) -> MailLine:
    return MailLine(
        "anvil",
        f"warning: {client_text(client_ip)}: blocked until {until.isoformat(timespec='seconds')}: "
        f"{esc(reason)} (rule {esc(rule, IN_PARENS)})",
        {"event": "blocked", "client": client_ip, "reason": reason, "rule": rule, "until": until},
        level="warning",
    )


def unblocked(client_ip: str, operator: str) -> MailLine:
    return MailLine(
        "anvil",
        f"{client_text(client_ip)}: block lifted by {esc(operator or '?', IN_NAME)}",
        {"event": "unblocked", "client": client_ip, "operator": operator},
    )


def report(queue_id: str, kind: str, report_queue_id: str | None) -> MailLine:
    """bounce: the report a message caused, and the report's own queue id."""
    words = _REPORT_WORDS.get(kind, "sender notification")
    report_id = report_queue_id or NOQUEUE
    return MailLine(
        "bounce",
        f"{queue_id}: {words}: {report_id}",
        {"queue_id": queue_id, "event": "report", "kind": kind, "report_queue_id": report_id},
    )


def _seconds(value: float) -> str:
    value = max(value, 0.0)
    return f"{value:.1f}" if value < 10 else f"{value:.0f}"


def _phase(value: float) -> str:
    """One of delays=a/b/c/d: two significant digits, 0 below 10 ms, as Postfix."""
    if value < 0.01:
        return "0"
    return f"{value:.2g}" if value < 10 else f"{value:.0f}"


def delays(
    event: DeliverySucceeded | DeliveryDeferred | DeliveryFailed,
    arrival: datetime | None,
    first_scheduled: datetime | None,
) -> tuple[float, float, float, float] | None:
    """Postfix's four phases: before the queue manager (arrival to the first job),
    in it (waiting, retries included), connection setup, transmission. None for a
    result without timings (from before they were recorded)."""
    timings = event.timings
    if timings is None or arrival is None:
        return None
    total = max((event.occurred_at - arrival).total_seconds(), 0.0)
    first = first_scheduled or timings.scheduled_at
    before = max((first - arrival).total_seconds(), 0.0) if first else 0.0
    setup, transfer = max(timings.setup_s, 0.0), max(timings.transfer_s, 0.0)
    before = min(before, total)
    waiting = max(total - before - setup - transfer, 0.0)
    return before, waiting, setup, transfer


def delivery(
    event: DeliverySucceeded | DeliveryDeferred | DeliveryFailed,
    arrival: datetime | None,
    first_scheduled: datetime | None = None,
) -> MailLine:
    """smtp (local for the mailbox store): one recipient's outcome of one attempt."""
    status = {
        "DeliverySucceeded": "sent",
        "DeliveryDeferred": "deferred",
        "DeliveryFailed": "bounced",
    }[event.type]
    relay = esc(event.remote_host, IN_ANGLES + IN_PARENS) if event.remote_host else "none"
    delay = (event.occurred_at - arrival).total_seconds() if arrival else 0.0
    reply = f"{event.reply_code} {event.reply_text}" if event.reply_code else event.reply_text
    if status == "bounced" and event.reply_code and event.remote_host:
        reply = f"host {event.remote_host} said: {reply}"
    dsn = esc(event.status, IN_ANGLES) or ("2.0.0" if status == "sent" else "4.0.0")
    phases = delays(event, arrival, first_scheduled)
    shown = f" delays={'/'.join(_phase(p) for p in phases)}," if phases else ""
    text = (
        f"{event.queue_id}: to=<{esc(event.recipient, IN_ANGLES)}>, relay={relay}, "
        f"delay={_seconds(delay)},{shown} dsn={dsn}, status={status} ({esc(reply, IN_PARENS)})"
    )
    daemon = "local" if event.remote_host == "mailbox" else "smtp"
    return MailLine(
        daemon,
        text,
        {
            "queue_id": event.queue_id,
            "event": status,
            "to": event.recipient,
            "relay": event.remote_host or None,
            "delay": round(delay, 3),
            "delays": [round(p, 3) for p in phases] if phases else None,
            "dsn": event.status,
            "status": status,
            "reply": reply,
            "attempt": event.attempt,
        },
    )


def queued(event: MessageReceived) -> MailLine:
    """qmgr: the message entered the queue."""
    return MailLine(
        "qmgr",
        f"{event.queue_id}: from=<{esc(event.mail_from, IN_ANGLES)}>, size={event.size}, "
        f"nrcpt={len(event.recipients)} (queue active)",
        {
            "queue_id": event.queue_id,
            "event": "queued",
            "from": event.mail_from,
            "size": event.size,
            "nrcpt": len(event.recipients),
        },
    )


def queue_event(
    event: Event, received: MessageReceived | None, first_scheduled: datetime | None = None
) -> MailLine | None:
    """The line for an event the queue consumed or published, if it has one."""
    qid = event.queue_id
    if isinstance(event, MessageReceived):
        return queued(event)
    if isinstance(event, DeliverySucceeded | DeliveryDeferred | DeliveryFailed):
        return delivery(event, received.occurred_at if received else None, first_scheduled)
    if isinstance(event, MessageExpired):
        sender = esc(received.mail_from, IN_ANGLES) if received else ""
        return MailLine(
            "qmgr",
            f"{qid}: from=<{sender}>, status=expired, returned to sender",
            {"queue_id": qid, "event": "expired", "recipients": list(event.recipients)},
        )
    operator_words = {
        MessageHeld: ("placed on hold", "hold"),
        MessageReleased: ("released from hold", "release"),
        MessageDeleted: ("removed", "delete"),
    }
    for cls, (words, action) in operator_words.items():
        if isinstance(event, cls):
            who = getattr(event, "operator", "") or "?"
            return MailLine(
                "postsuper",
                f"{qid}: {words} (operator {esc(who, IN_PARENS)})",
                {"queue_id": qid, "event": action, "operator": who},
            )
    return None


def removed(queue_id: str) -> MailLine:
    """qmgr: every recipient is final, the message has left the queue."""
    return MailLine("qmgr", f"{queue_id}: removed", {"queue_id": queue_id, "event": "removed"})


def requeued(queue_id: str) -> MailLine:
    """postsuper -r: an operator's retry."""
    return MailLine("postsuper", f"{queue_id}: requeued", {"queue_id": queue_id, "event": "retry"})


def _per_recipient(items: Iterable[object]) -> Iterator[object]:
    """A job's results (DeliveryAttempted) as one line each, as Postfix logs them."""
    for item in items:
        if isinstance(item, DeliveryAttempted):
            yield from item.per_recipient()
        else:
            yield item


def queue_lines(
    trigger: object,
    outputs: Iterable[object],
    received: MessageReceived | None,
    first_scheduled: datetime | None = None,
    completed: str | None = None,
) -> Iterator[MailLine]:
    """The lines of one queue decision: its input, then the events it published, then
    "removed" when the decision `completed` the message of that queue id (no event
    says so: completion is every recipient being final).

    The input is an event or a fired timer; of timers only an operator's retry
    (`forced`) has a line.
    """
    if getattr(trigger, "kind", None) == "retry" and getattr(trigger, "forced", False):
        yield requeued(str(getattr(trigger, "queue_id", "")))
    for item in _per_recipient([trigger, *outputs]):
        if isinstance(item, Event):
            line = queue_event(item, received, first_scheduled)
            if line is not None:
                yield line
    if completed is not None:
        yield removed(completed)
