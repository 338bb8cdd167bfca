"""A small LMTP client (RFC 2033) on asyncio streams: one transaction, one reply per recipient.

aiosmtplib speaks SMTP only (it sends EHLO, and reads a single reply after
DATA), so LMTP gets its own few lines. This module only talks and records
what it heard; `core.local.lmtp_replies` decides which reply belongs to whom.
Nothing escapes as an exception: a failure becomes a stand-in reply that defers.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from services.delivery.core.errors import (
    ConnectFailedError,
    ConnectionLostError,
    DeliveryError,
    ProtocolError,
)
from services.delivery.core.local import lmtp_replies
from services.delivery.core.replies import Reply

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_S = 300.0  # RFC 5321 section 4.5.3.2
DATA_TIMEOUT_S = 600.0
MAX_REPLY_LINES = 100
MAX_LINE = 4096


@dataclass(frozen=True)
class LmtpTarget:
    host: str
    port: int
    lhlo: str  # our host name, sent with LHLO
    connect_timeout: float = 30.0
    command_timeout: float = COMMAND_TIMEOUT_S


@dataclass
class _Transcript:
    mail: Reply | None = None
    rcpts: list[Reply] = field(default_factory=list)
    data: list[Reply] = field(default_factory=list)
    broken: Reply | None = None


def dot_stuffed(body: bytes) -> bytes:
    """The DATA payload: CRLF lines, leading dots doubled, then the end-of-data line."""
    lines = body.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    stuffed = [b"." + line if line.startswith(b".") else line for line in lines]
    return b"".join(line + b"\r\n" for line in stuffed) + b".\r\n"


async def deliver_lmtp(
    target: LmtpTarget, mail_from: str, recipients: Sequence[str], body: bytes
) -> list[Reply]:
    transcript = _Transcript()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(target.host, target.port), target.connect_timeout
        )
    except (OSError, TimeoutError) as exc:
        where = f"{target.host}:{target.port}"
        unreachable = ConnectFailedError(f"cannot connect to LMTP server {where}: {exc}")
        return [unreachable.reply] * len(recipients)
    try:
        await _transaction(reader, writer, target, mail_from, recipients, body, transcript)
    except DeliveryError as exc:
        transcript.broken = exc.reply
    except (OSError, TimeoutError, ValueError) as exc:  # ValueError: a line over the limit
        text = f"LMTP connection lost: {type(exc).__name__} {exc}".strip()
        transcript.broken = ConnectionLostError(text).reply
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return lmtp_replies(
        transcript.mail, transcript.rcpts, transcript.data, len(recipients), transcript.broken
    )


async def _transaction(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    target: LmtpTarget,
    mail_from: str,
    recipients: Sequence[str],
    body: bytes,
    transcript: _Transcript,
) -> None:
    timeout = target.command_timeout

    async def command(line: str) -> Reply:
        writer.write(line.encode() + b"\r\n")
        await writer.drain()
        return await _read_reply(reader, timeout)

    greeting = await _read_reply(reader, timeout)
    if greeting.code != 220:
        raise ConnectFailedError(f"LMTP greeting: {greeting.code} {greeting.text}")
    lhlo = await command(f"LHLO {target.lhlo}")
    if lhlo.outcome != "succeeded":
        raise ProtocolError(f"LHLO refused: {lhlo.code} {lhlo.text}")
    transcript.mail = await command(f"MAIL FROM:<{mail_from}>")
    if transcript.mail.outcome != "succeeded":
        return
    for rcpt in recipients:
        transcript.rcpts.append(await command(f"RCPT TO:<{rcpt}>"))
    accepted = sum(1 for r in transcript.rcpts if r.outcome == "succeeded")
    if accepted:
        start = await command("DATA")
        if start.code != 354:
            transcript.data = [start] * accepted
        else:
            writer.write(dot_stuffed(body))
            await writer.drain()
            for _ in range(accepted):
                transcript.data.append(await _read_reply(reader, DATA_TIMEOUT_S))
    with contextlib.suppress(Exception):
        await command("QUIT")


async def _read_reply(reader: asyncio.StreamReader, limit_s: float) -> Reply:
    texts: list[str] = []
    for _ in range(MAX_REPLY_LINES):
        line = await asyncio.wait_for(reader.readline(), limit_s)
        if not line:
            raise ConnectionLostError("LMTP server closed the connection")
        text = line[:MAX_LINE].decode("utf-8", "replace").rstrip("\r\n")
        code = text[:3]
        if len(text) < 3 or not code.isdigit():
            raise ProtocolError(f"malformed LMTP reply {text[:100]!r}")
        texts.append(text[4:])
        if text[3:4] != "-":
            return Reply(int(code), " ".join(t for t in texts if t))
    raise ProtocolError("LMTP reply too long")
