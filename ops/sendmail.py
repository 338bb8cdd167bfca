"""`mailbus sendmail`: the sendmail command line that cron jobs and applications use.

    mailbus sendmail [-t] [-i | -oi] [-f SENDER] [-F NAME] [RECIPIENT ...] < message

The message goes to the running instance over SMTP, to its first listener that
needs no login, so it passes policy and the mail log like any other (the
loopback address must be allowed to relay for mail to other domains: the demo's
`local_network` is). The configuration is --config, $MAILBUS_CONFIG, or the one
the `mailbus up` on --data-dir / $MAILBUS_DATA_DIR / ./var runs with.

Exit codes are sendmail's (sysexits): 0 sent, 64 usage, 65 bad message, 67 a
recipient refused, 69 unavailable, 75 try again later, 78 configuration.
"""

from __future__ import annotations

import argparse
import getpass
import os
import smtplib
import ssl
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from email.utils import formataddr, formatdate, getaddresses, make_msgid
from typing import Any

from libs.common.config import Config, ConfigError, load_config
from ops import datadir

EX_USAGE, EX_DATAERR, EX_NOUSER, EX_UNAVAILABLE, EX_TEMPFAIL, EX_CONFIG = 64, 65, 67, 69, 75, 78


class SendmailError(Exception):
    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def add_parser(sub: Any) -> None:
    p = sub.add_parser("sendmail", help="send a message read from stdin (sendmail options)")
    p.add_argument("-t", action="store_true", help="recipients from To, Cc and Bcc too")
    p.add_argument("-i", action="store_true", help="a line with a single dot is no end")
    p.add_argument(
        "-o", action="append", default=[], metavar="OPT", help="-oi as -i; others ignored"
    )
    p.add_argument("-f", dest="sender", default=None, help="envelope sender")
    p.add_argument("-F", dest="full_name", default=None, help="the sender's full name")
    p.add_argument("--config", default=None)
    p.add_argument("--data-dir", default=None)
    p.add_argument("--timeout", type=float, default=30.0)
    p.add_argument("recipients", nargs="*")
    p.set_defaults(func=sendmail_command)


@dataclass(frozen=True)
class Prepared:
    sender: str
    recipients: list[str]
    message: bytes


def read_message(data: bytes, dot_ends: bool) -> bytes:
    """Stdin as the message; without -i a line of one dot ends it, as sendmail does."""
    if not dot_ends:
        return data
    lines = data.splitlines(keepends=True)
    for index, line in enumerate(lines):
        if line.rstrip(b"\r\n") == b".":
            return b"".join(lines[:index])
    return data


def _split(message: bytes) -> tuple[list[bytes], bytes]:
    """Header lines (continuations joined to their field) and the rest."""
    head, sep, body = message.replace(b"\r\n", b"\n").partition(b"\n\n")
    if not sep and not head.split(b"\n", 1)[0].partition(b":")[1]:
        return [], message.replace(b"\r\n", b"\n")  # no header at all
    fields: list[bytes] = []
    for line in head.split(b"\n"):
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += b"\n" + line
        elif line:
            fields.append(line)
    return fields, body


def _name(field: bytes) -> str:
    return field.partition(b":")[0].strip().decode("ascii", "replace").lower()


def prepare(
    message: bytes,
    arguments: Sequence[str],
    from_headers: bool,
    sender: str,
    full_name: str | None,
    hostname: str,
) -> Prepared:
    """Envelope and message as cleanup would make them: -t's recipients taken (Bcc then
    removed), From, Date and Message-ID added where missing."""
    fields, body = _split(message)
    recipients = list(arguments)
    if from_headers:
        values = [
            f.partition(b":")[2].decode("utf-8", "replace")
            for f in fields
            if _name(f) in ("to", "cc", "bcc")
        ]
        recipients += [addr for _, addr in getaddresses(values) if addr]
        fields = [f for f in fields if _name(f) != "bcc"]
    recipients = list(dict.fromkeys(recipients))
    if not recipients:
        raise SendmailError("no recipients (give them as arguments, or -t)", EX_USAGE)
    names = {_name(f) for f in fields}
    added: list[bytes] = []
    if "from" not in names:
        added.append(f"From: {formataddr((full_name or '', sender))}".encode())
    if "date" not in names:
        added.append(f"Date: {formatdate(localtime=True)}".encode())
    if "message-id" not in names:
        added.append(f"Message-ID: {make_msgid(domain=hostname)}".encode())
    head = b"\r\n".join(line.replace(b"\n", b"\r\n") for line in fields + added)
    text = head + b"\r\n\r\n" + body.replace(b"\n", b"\r\n")
    return Prepared(sender, recipients, text)


def find_config(args: argparse.Namespace) -> tuple[str, Config]:
    path = args.config or os.environ.get("MAILBUS_CONFIG")
    if not path:
        directory = datadir.data_dir(args.data_dir)
        if not datadir.is_running(directory):
            raise SendmailError(
                f"no --config, and no mailbus up is running on {directory}", EX_UNAVAILABLE
            )
        path = str(datadir.holder(directory / datadir.LOCK_FILE).get("config") or "")
    try:
        return path, load_config(path)
    except ConfigError as exc:
        raise SendmailError("; ".join(exc.errors), EX_CONFIG) from exc


def submission_address(config: Config) -> tuple[str, int, str]:
    """Host, port and TLS mode of the first SMTP listener that needs no login."""
    for listener in config.listeners:
        if listener.protocol == "smtp" and not listener.require_auth:
            host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(
                listener.host, listener.host
            )
            return host, listener.port, listener.tls
    raise SendmailError("no SMTP listener without require_auth to submit to", EX_CONFIG)


def submit(prepared: Prepared, host: str, port: int, tls: str, timeout: float) -> None:
    context = ssl.create_default_context()
    # Our own listener on this host, often with a self-signed certificate.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    client: smtplib.SMTP
    try:
        if tls == "implicit":
            client = smtplib.SMTP_SSL(host, port, timeout=timeout, context=context)
        else:
            client = smtplib.SMTP(host, port, timeout=timeout)
        with client:
            client.ehlo_or_helo_if_needed()
            if tls == "starttls" and client.has_extn("starttls"):
                client.starttls(context=context)
            refused = client.sendmail(prepared.sender, prepared.recipients, prepared.message)
    except smtplib.SMTPRecipientsRefused as exc:
        raise _refusal(exc.recipients) from exc
    except smtplib.SMTPResponseException as exc:
        code = EX_TEMPFAIL if 400 <= exc.smtp_code < 500 else EX_UNAVAILABLE
        error = exc.smtp_error
        text = error.decode(errors="replace") if isinstance(error, bytes) else str(error)
        raise SendmailError(f"{exc.smtp_code} {text}", code) from exc
    except (OSError, smtplib.SMTPException) as exc:
        raise SendmailError(f"cannot reach {host}:{port}: {exc}", EX_UNAVAILABLE) from exc
    if refused:
        raise _refusal(refused)


def _refusal(refused: dict[str, tuple[int, bytes]]) -> SendmailError:
    lines = [f"<{r}>: {c} {t.decode(errors='replace')}" for r, (c, t) in refused.items()]
    temporary = all(400 <= c < 500 for c, _ in refused.values())
    return SendmailError("; ".join(lines), EX_TEMPFAIL if temporary else EX_NOUSER)


def sendmail_command(args: argparse.Namespace) -> int:
    dot_ends = not (args.i or "i" in args.o)
    try:
        _, config = find_config(args)
        sender = args.sender if args.sender is not None else _default_sender(config)
        message = read_message(sys.stdin.buffer.read(), dot_ends)
        prepared = prepare(
            message, args.recipients, args.t, sender, args.full_name, config.server.hostname
        )
        host, port, tls = submission_address(config)
        submit(prepared, host, port, tls, args.timeout)
    except SendmailError as exc:
        print(f"mailbus sendmail: {exc}", file=sys.stderr)
        return exc.code
    return 0


def _default_sender(config: Config) -> str:
    try:
        user = getpass.getuser()
    except Exception:
        user = "nobody"
    return f"{user}@{config.server.hostname}"
