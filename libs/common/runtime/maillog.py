"""Logging of every service process: the mail log's shape, level and format.

`logging.format: text` writes syslog-shaped lines, as Postfix's maillog:

    Dec  1 22:47:52 mx.example.test mailbus/smtpd[4242]: 4Xk...: client=unknown[192.0.2.7]

so pflogsumm (`--syslog-name=mailbus`) and fail2ban's postfix filters
(`_daemon=mailbus/\\w+`) read a file of them as they read Postfix's. Lines of the
mail log (`emit`, built by libs/common/mail/maillines.py) name the Postfix
daemon of their role; other lines name the service and start with their level
(`warning: `, `error: `) when it is not info. `json` writes the same as one
object per line, with the line's fields and, when a span is current, its trace id.
The lines go to stderr, which `mailbus up` hands its children as is.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from datetime import UTC, datetime
from typing import Any

from opentelemetry import trace

from libs.common.mail.maillines import MailLine

MAILLOG = logging.getLogger("mailbus.maillog")
SYSLOG_NAME = "mailbus"
# Libraries whose per-command chatter is no mail log: their warnings still show.
_CHATTY = ("mail.log", "nats", "aiosmtpd")
_PREFIX = {logging.WARNING: "warning: ", logging.ERROR: "error: ", logging.CRITICAL: "fatal: "}


def emit(line: MailLine) -> None:
    """Write one mail-log line."""
    level = logging.WARNING if line.level == "warning" else logging.INFO
    MAILLOG.log(level, "%s", line.text, extra={"mailline": line})


def _mailline(record: logging.LogRecord) -> MailLine | None:
    line = getattr(record, "mailline", None)
    return line if isinstance(line, MailLine) else None


def _escape_message(text: str) -> str:
    # A message that quotes client input with %s must not break the line in two.
    return text.replace("\r", "\\r").replace("\n", "\\n")


class TextFormatter(logging.Formatter):
    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program
        self.host = socket.gethostname()

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%b %e %H:%M:%S", time.localtime(record.created))
        line = _mailline(record)
        if line is not None:
            tag, text = line.daemon, line.text  # built escaped
        else:
            tag = self.program
            text = _PREFIX.get(record.levelno, "debug: " if record.levelno < logging.INFO else "")
            text += _escape_message(record.getMessage())
            if record.exc_info:
                text += " " + _escape_message(self.formatException(record.exc_info))
        return f"{stamp} {self.host} {SYSLOG_NAME}/{tag}[{os.getpid()}]: {text}"


class JsonFormatter(logging.Formatter):
    def __init__(self, program: str) -> None:
        super().__init__()
        self.program = program
        self.host = socket.gethostname()

    def format(self, record: logging.LogRecord) -> str:
        line = _mailline(record)
        out: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "host": self.host,
            "program": f"{SYSLOG_NAME}/{line.daemon if line else self.program}",
            "pid": os.getpid(),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": line.text if line else record.getMessage(),
        }
        if line is not None:
            out.update({k: v for k, v in line.fields.items() if v is not None})
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        span = trace.get_current_span().get_span_context()
        if span.is_valid:
            out["trace_id"] = f"{span.trace_id:032x}"
        return json.dumps(out, default=str, ensure_ascii=True)


def setup(level: str = "info", fmt: str = "text", program: str = "mailbus") -> None:
    """Replaces the root logger's handlers: callable again once the config is read."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(program) if fmt == "json" else TextFormatter(program))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    numeric = getattr(logging, level.upper(), logging.INFO)
    root.setLevel(numeric)
    for name in _CHATTY:
        # At debug, everything; above it, only their warnings.
        chatty = numeric if numeric <= logging.DEBUG else max(numeric, logging.WARNING)
        logging.getLogger(name).setLevel(chatty)
