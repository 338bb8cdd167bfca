"""A bounded mutation fuzz of the SMTP and POP3 listeners: no traceback, no internal error.

    python bench/fuzz.py [--sessions 2000] [--seed 1]

Starts a nats-server, policy and ingress in this process, then plays sessions
made of well-formed SMTP and POP3 conversations with their bytes mutated (bytes
flipped, inserted or cut, 8-bit and broken UTF-8, control characters, Unicode
digits, overlong lines, pipelined bursts). Prints how many sessions, commands
and replies it saw, and every finding: a `451 4.3.0` reply (an exception inside
ingress), a log record at ERROR or with a traceback, or a listener that stops
answering. Exits 1 on any finding. `tests/integration/test_fuzz.py` runs a
short version of it.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libs.common.config import load_config_text  # noqa: E402
from libs.common.runtime import bus  # noqa: E402
from libs.common.runtime.embedded_nats import EmbeddedNats  # noqa: E402
from libs.common.runtime.service import start_service  # noqa: E402

READ_S = 1.0  # no reply within this: the server waits for more (in DATA, AUTH ...)
SESSION_S = 10.0

SMTP_SEEDS: tuple[tuple[bytes, ...], ...] = (
    (b"EHLO client.fuzz.test", b"MAIL FROM:<alice@remote.test> SIZE=100 BODY=8BITMIME",
     b"RCPT TO:<bob@example.test> NOTIFY=SUCCESS,FAILURE ORCPT=rfc822;bob@example.test",
     b"DATA", b"Subject: fuzz\r\n\r\nbody\r\n.", b"QUIT"),
    (b"HELO client.fuzz.test", b"MAIL FROM:<>", b"RCPT TO:<postmaster>", b"RSET", b"QUIT"),
    (b"EHLO client.fuzz.test", b"MAIL FROM:<a@remote.test> SMTPUTF8",
     "RCPT TO:<j\u00f6rg@example.test>".encode(), b"BDAT 5 LAST\r\nhello", b"QUIT"),
    (b"EHLO client.fuzz.test", b"AUTH PLAIN AGFsaWNlAHNlY3JldA==", b"AUTH LOGIN",
     b"YWxpY2U=", b"c2VjcmV0", b"VRFY bob", b"HELP", b"NOOP", b"STARTTLS", b"QUIT"),
    (b"EHLO client.fuzz.test", b"MAIL FROM:<a@remote.test> RET=HDRS ENVID=x+2By",
     b"RCPT TO:<nobody@example.test>", b"RCPT TO:<bob@example.test> NOTIFY=NEVER", b"DATA",
     b"From: a\r\n..dot\r\n.", b"QUIT"),
)  # fmt: skip

POP3_SEEDS: tuple[tuple[bytes, ...], ...] = (
    (b"CAPA", b"USER bob@example.test", b"PASS secret", b"STAT", b"LIST", b"UIDL 1",
     b"RETR 1", b"TOP 1 0", b"DELE 1", b"RSET", b"NOOP", b"QUIT"),
    (b"STLS", b"AUTH PLAIN", b"USER", b"PASS", b"APOP bob x", b"QUIT"),
)  # fmt: skip

NASTY: tuple[bytes, ...] = (
    b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x00", b"\r", b"\n", b"\x1b[2J", b"\x7f",
    "\u00b2".encode(), "\u0661\u0662".encode(), "\u2028".encode(), b"\xc2\x85", b"<", b">",
    b":", b"=", b" ", b"\t", b"%", b"\\", b'"', b"@", b"SIZE=", b"NOTIFY=", b"ORCPT=",
    b"BDAT 99999999999999999999", b"-1", b"A" * 1100,
)  # fmt: skip


@dataclass
class Report:
    sessions: int = 0
    commands: int = 0
    replies: int = 0
    findings: list[str] = field(default_factory=list)


def mutate(line: bytes, rng: random.Random) -> bytes:
    """One line with one to three mutations."""
    out = bytearray(line)
    for _ in range(rng.randint(1, 3)):
        kind = rng.randrange(6)
        pos = rng.randint(0, len(out))
        if kind == 0 and out:  # flip a byte
            out[min(pos, len(out) - 1)] = rng.randrange(256)
        elif kind == 1:  # insert something nasty
            out[pos:pos] = rng.choice(NASTY)
        elif kind == 2:  # cut
            del out[pos : pos + rng.randint(1, 8)]
        elif kind == 3:  # repeat a piece
            out[pos:pos] = out[max(0, pos - 8) : pos] * rng.randint(1, 4)
        elif kind == 4:  # swap case
            out = bytearray(bytes(out).swapcase())
        else:  # keep the line; send it twice
            out += b"\r\n" + out
    return bytes(out)


def session(seeds: tuple[tuple[bytes, ...], ...], rng: random.Random) -> list[bytes]:
    lines = list(rng.choice(seeds))
    for i in range(len(lines)):
        if rng.random() < 0.35:
            lines[i] = mutate(lines[i], rng)
    if rng.random() < 0.2:  # a pipelined burst: several lines in one write
        cut = rng.randint(0, len(lines) - 1)
        lines[cut:] = [b"\r\n".join(lines[cut:])]
    return lines


async def play(
    addr: tuple[str, int],
    lines: list[bytes],
    report: Report,
    internal: Callable[[bytes], bool],
) -> None:
    reader, writer = await asyncio.wait_for(asyncio.open_connection(*addr), READ_S)
    try:
        if not await _read(reader, report, internal, greeting=True):
            return
        for line in lines:
            report.commands += 1
            writer.write(line + b"\r\n")
            await writer.drain()
            if not await _read(reader, report, internal):
                return
    except ConnectionError:
        pass  # the server may close on a bad command; that is an answer
    finally:
        writer.close()


async def _read(
    reader: asyncio.StreamReader,
    report: Report,
    internal: Callable[[bytes], bool],
    greeting: bool = False,
) -> bool:
    """Every reply line available now; False when the server closed the connection."""
    try:
        line = await asyncio.wait_for(reader.readline(), READ_S * (5 if greeting else 1))
    except TimeoutError:
        if greeting:
            report.findings.append("no greeting: the listener stopped answering")
        return not greeting  # waiting for more input (in DATA, AUTH ...): fine
    while line:
        report.replies += 1
        if internal(line):
            report.findings.append(f"internal error: {line!r}")
        try:
            line = await asyncio.wait_for(reader.readline(), 0.05)
        except TimeoutError:
            return True
    return False


def smtp_internal(line: bytes) -> bool:
    return line.startswith((b"451 4.3.0", b"421 4.3.0")) or b"Internal" in line


def pop3_internal(line: bytes) -> bool:
    return b"internal" in line.lower()


async def fuzz(
    smtp: tuple[str, int],
    pop3: tuple[str, int],
    sessions: int,
    seed: int,
    within_s: float,
    parallel: int = 8,
) -> Report:
    """`sessions` sessions, four in five SMTP and one POP3, `parallel` at a time, or until
    `within_s` has passed."""
    rng = random.Random(seed)
    report = Report()
    stop = time.monotonic() + within_s

    def one(n: int) -> asyncio.Future[None]:
        if n % 5 == 4:
            game = play(pop3, session(POP3_SEEDS, rng), report, pop3_internal)
        else:
            game = play(smtp, session(SMTP_SEEDS, rng), report, smtp_internal)
        return asyncio.ensure_future(asyncio.wait_for(game, SESSION_S))

    for start in range(0, sessions, parallel):
        if time.monotonic() > stop:
            break
        batch = [one(n) for n in range(start, min(sessions, start + parallel))]
        report.sessions += len(batch)
        for outcome in await asyncio.gather(*batch, return_exceptions=True):
            if isinstance(outcome, BaseException):
                report.findings.append(f"session failed: {type(outcome).__name__}: {outcome}")
    return report


class ErrorLog(logging.Handler):
    """Log records a fuzz must never cause: ERROR and above, or any with a traceback."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.found: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.levelno >= logging.ERROR or record.exc_info:
            self.found.append(f"{record.levelname} {record.name}: {record.getMessage()[:200]}")


CONFIG = """
server: {hostname: mx.fuzz.test, local_domains: [example.test]}
users: [{address: bob@example.test}]
listeners:
  - {name: smtp, address: "127.0.0.1:0", tls: none}
  - {name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: none}
security:
  require_sender_domain_dns: false
  max_connections_per_ip: 0
  max_messages_per_hour_per_ip: 0
  directory_harvest: {max_unknown_recipients: 0}
  command_timeout: 5s
  data_timeout: 2s
  min_data_rate: 0
"""


async def run(args: argparse.Namespace) -> int:
    from services.ingress.service import IngressService
    from services.policy.service import PolicyService

    config = load_config_text(CONFIG)
    errors = ErrorLog()
    logging.getLogger().addHandler(errors)
    with tempfile.TemporaryDirectory() as tmp:
        server = EmbeddedNats(data_dir=Path(tmp) / "nats", log_file=Path(tmp) / "nats.log")
        server.start()
        try:
            nc = await bus.connect([server.url], name="fuzz")
            await bus.ensure_topology(await bus.wait_for_jetstream(nc))
            policy = await start_service("policy", PolicyService, config, [server.url])
            ingress = await start_service("ingress", IngressService, config, [server.url])
            service = ingress.service
            assert isinstance(service, IngressService)
            started = time.monotonic()
            report = await fuzz(
                service.addresses["smtp"],
                service.addresses["pop3"],
                args.sessions,
                args.seed,
                args.seconds,
            )
            elapsed = time.monotonic() - started
            await ingress.close()
            await policy.close()
            await nc.close()
        finally:
            server.stop()
    findings = report.findings + errors.found
    print(
        f"sessions {report.sessions}  commands {report.commands}  replies {report.replies}  "
        f"in {elapsed:.1f} s  findings {len(findings)}"
    )
    for finding in findings[:50]:
        print("  " + finding)
    return 1 if findings else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--seconds", type=float, default=600.0, help="stop after this long")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    sys.exit(asyncio.run(run(args)))


if __name__ == "__main__":
    main()
