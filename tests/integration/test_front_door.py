"""The SMTP front door over raw sockets: extensions, RFC rules, deadlines, TLS, logs.

Each test writes the bytes a hostile or unusual client would, and reads every
byte of the answers, on a real ingress with a real nats-server (policy is the
stand-in Responder of test_ingress).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from libs.common.contract.events import Client, MessageReceived, Recipient
from libs.common.mail.submission import MessageStore
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import Running
from services.ingress.adapters import spool
from tests.integration.test_ingress import (
    Responder,
    address,
    body_of,
    received_events,
    start_ingress,
    stored_nothing,
)
from tests.support.rawsmtp import RawSmtp, sample

CONFIG = """
server:
  hostname: mx.example.test
  local_domains: [example.test]
users:
  - {address: bob@example.test}
listeners:
  - {name: plain, address: "127.0.0.1:0", tls: none}
  - {name: smtp, address: "127.0.0.1:0", tls: starttls}
  - {name: smtps, address: "127.0.0.1:0", tls: implicit}
  - {name: submission, address: "127.0.0.1:0", tls: starttls, require_auth: true}
  - {name: early, address: "127.0.0.1:0", tls: none, pregreet_wait: 1s}
policy:
  timeout: 2s
security:
  require_sender_domain_dns: false
  max_failed_commands: 0
  max_message_size: 100KB
  max_junk_commands: 5
  command_timeout: 2s
  data_timeout: 1s
  min_data_rate: 2000
  tls_handshake_timeout: 1s
"""

MESSAGE = b"Subject: hello\r\n\r\nfirst line\r\n.dotted\r\nlast line\r\n"


@pytest.fixture
async def door(nats_server: EmbeddedNats, js: JetStreamContext, nc: NATS) -> AsyncIterator[Running]:
    await Responder().start(nc)
    running = await start_ingress(nats_server, CONFIG)
    try:
        yield running
    finally:
        await running.close()


async def ehlo(client: RawSmtp) -> list[str]:
    reply = await client.cmd("EHLO client.remote.test")
    assert reply.startswith("250-")
    return [line[4:] for line in reply.split("\n")]


def code(reply: str) -> str:
    return " ".join(reply.split(" ")[:2])


# --- offered extensions -------------------------------------------------------------------


async def test_ehlo_offers_pipelining_enhancedstatuscodes_and_chunking(door: Running) -> None:
    client = await RawSmtp.greeted(address(door, "plain"))
    offered = await ehlo(client)
    assert {"PIPELINING", "ENHANCEDSTATUSCODES", "CHUNKING", "8BITMIME"} <= set(offered)
    await client.close()


async def test_a_pipelined_transaction_after_ehlo(door: Running, js: JetStreamContext) -> None:
    client = await RawSmtp.greeted(address(door, "plain"))
    await ehlo(client)
    await client.send(
        b"MAIL FROM:<alice@remote.test>\r\nRCPT TO:<bob@example.test>\r\n"
        b"RCPT TO:<carol@example.test>\r\nDATA\r\n"
    )
    assert [await client.reply() for _ in range(4)] == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "250 2.1.5 Ok",
        "354 End data with <CR><LF>.<CR><LF>",
    ]
    queued = await client.cmd(b"Subject: x\r\n\r\nbody\r\n.")
    assert queued.startswith("250 2.0.0 Ok: queued as ")
    await client.close()


async def test_commands_pipelined_after_helo_are_refused(
    door: Running, js: JetStreamContext
) -> None:
    """No PIPELINING was offered to HELO: several commands in one write is a violation."""
    client = await RawSmtp.greeted(address(door, "plain"))
    assert await client.cmd("HELO client.remote.test") == "250 mx.example.test"
    await client.send(b"MAIL FROM:<alice@remote.test>\r\nRCPT TO:<bob@example.test>\r\n")
    assert await client.reply() == "554 5.5.0 Error: SMTP protocol synchronization"
    assert await client.closed()
    before = await RawSmtp.greeted(address(door, "plain"))
    await before.send(b"EHLO client.remote.test\r\nMAIL FROM:<alice@remote.test>\r\n")
    assert code(await before.reply()) == "554 5.5.0"  # before EHLO's answer, too
    assert await before.closed()
    await stored_nothing(js)


async def test_message_sent_before_the_354_is_refused(door: Running, js: JetStreamContext) -> None:
    client = await RawSmtp.greeted(address(door, "plain"))
    await ehlo(client)
    await client.send(
        b"MAIL FROM:<alice@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        b"Subject: x\r\n\r\nRSET\r\nMAIL FROM:<spoof@remote.test>\r\n.\r\n"
    )
    assert [await client.reply() for _ in range(3)] == [
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
        "554 5.5.0 Error: SMTP protocol synchronization",
    ]
    assert await client.closed()  # the message's lines are never read as commands
    await stored_nothing(js)


async def test_bdat_chunks_make_one_message(door: Running, js: JetStreamContext) -> None:
    client = await RawSmtp.greeted(address(door, "plain"))
    await ehlo(client)
    first, last = b"Subject: chunks\r\n\r\nQUIT\r\n", b"RSET\r\nend\r\n"
    await client.send(b"MAIL FROM:<alice@remote.test>\r\nRCPT TO:<bob@example.test>\r\n")
    assert [await client.reply() for _ in range(2)] == ["250 2.1.0 Ok", "250 2.1.5 Ok"]
    await client.send(f"BDAT {len(first)}\r\n".encode() + first)
    assert await client.reply() == f"250 2.0.0 {len(first)} octets received"
    await client.send(f"BDAT {len(last)} LAST\r\n".encode() + last)
    queued = await client.reply()
    assert queued.startswith("250 2.0.0 Ok: queued as "), queued
    qid = queued.rsplit(" ", 1)[1]
    body = await body_of(js, qid)
    assert body.endswith(b"\r\n" + first + last)  # the chunks' bytes, not commands
    [(event, _)] = await received_events(js)
    assert event.size == len(body)
    assert await client.cmd("NOOP") == "250 2.0.0 OK"
    await client.close()


async def test_a_refused_chunk_is_still_read_not_run(door: Running, js: JetStreamContext) -> None:
    client = await RawSmtp.greeted(address(door, "plain"))
    await ehlo(client)
    chunk = b"MAIL FROM:<x@remote.test>\r\n"
    await client.send(f"BDAT {len(chunk)} LAST\r\n".encode() + chunk)  # no transaction
    assert await client.reply() == "503 5.5.1 Error: need RCPT command"
    assert await client.cmd("NOOP") == "250 2.0.0 OK"  # the chunk was not a command
    # Over max_message_size (100 KB) across chunks: read to the end, then 552.
    await client.send(b"MAIL FROM:<alice@remote.test>\r\nRCPT TO:<bob@example.test>\r\n")
    assert [await client.reply() for _ in range(2)] == ["250 2.1.0 Ok", "250 2.1.5 Ok"]
    part = b"x" * 60_000
    await client.send(f"BDAT {len(part)}\r\n".encode() + part)
    assert code(await client.reply()) == "250 2.0.0"
    await client.send(f"BDAT {len(part)} LAST\r\n".encode() + part)
    assert code(await client.reply()) == "552 5.3.4"
    assert await client.cmd("DATA") == "503 5.5.1 Error: need RCPT command"
    await client.close()
    await stored_nothing(js)


# --- unknown commands, 8-bit and broken input ---------------------------------------------


async def test_unknown_commands_get_502_and_are_not_echoed(door: Running) -> None:
    client = await RawSmtp.greeted(address(door, "plain"))
    await ehlo(client)
    # max_failed_commands is 0 here: no limit, so aiosmtpd's own (5 unknown) must not apply.
    for _ in range(8):
        assert await client.cmd("XYZZY") == "502 5.5.2 Error: command not recognized"
    assert await client.cmd(b"A\rB") == "500 5.5.2 Error: bad syntax"
    assert await client.cmd("NOOP") == "250 2.0.0 OK"
    await client.close()


async def test_broken_utf8_and_non_ascii_input(door: Running) -> None:
    client = await RawSmtp.greeted(address(door, "plain"))
    assert code(await client.cmd(b"EHLO h\xffst.example")) == "501 5.5.2"
    await ehlo(client)
    replies = [
        await client.cmd(b"MAIL FROM:<\xff@example.org>"),
        await client.cmd("MAIL FROM:<alice@remote.test> SIZE=\u00b2"),
        await client.cmd("MAIL FROM:<alice@remote.test> SIZE=\u0661\u0662"),
        await client.cmd("MAIL FROM:<j\u00f6rg@remote.test>"),
        await client.cmd(b"MAIL FROM:<a\x1b[2Jb@remote.test>"),
        await client.cmd("MAIL FROM:<j\u00f6rg@remote.test> SMTPUTF8"),
        await client.cmd(b"RCPT TO:<bob@example.test> NOTIFY=\xff"),
        await client.cmd("RCPT TO:<bob@example.test>"),
    ]
    assert [code(r) for r in replies] == [
        "501 5.5.2",
        "501 5.5.4",
        "501 5.5.4",
        "553 5.6.7",
        "501 5.5.2",
        "250 2.1.0",
        "501 5.5.2",
        "250 2.1.5",
    ]
    assert not any("\x1b" in r or "\\x" in r for r in replies)
    await client.close()


# --- AUTH and STARTTLS ---------------------------------------------------------------------


async def test_auth_protocol_rules(door: Running) -> None:
    client = await RawSmtp.greeted(address(door, "smtps"), tls=True)
    await ehlo(client)
    other = base64.b64encode(b"admin\0alice\0secret").decode()
    assert await client.cmd(f"AUTH PLAIN {other}") == (
        "535 5.7.8 Authorization identity differs from the authenticated one"
    )
    assert code(await client.cmd("MAIL FROM:<alice@remote.test>")) == "250 2.1.0"
    own = base64.b64encode(b"alice\0alice\0secret").decode()
    assert code(await client.cmd(f"AUTH PLAIN {own}")) == "503 5.5.1"  # inside a transaction
    assert await client.cmd("STARTTLS") == "503 5.5.1 Error: TLS already active"
    assert code(await client.cmd("RSET")) == "250 2.0.0"
    assert code(await client.cmd(f"AUTH PLAIN {own}")) == "235 2.7.0"
    await client.close()


async def test_starttls_inside_tls_and_tls_in_received(door: Running, js: JetStreamContext) -> None:
    before = sample("mailbus_smtpd_sessions_active", listener="smtp")
    opened = sample("mailbus_smtpd_connections_total", listener="smtp")
    client = await RawSmtp.greeted(address(door, "smtp"))
    await ehlo(client)
    await client.starttls()
    assert "STARTTLS" not in await ehlo(client)
    assert await client.cmd("STARTTLS") == "503 5.5.1 Error: TLS already active"
    await client.send(b"MAIL FROM:<alice@remote.test>\r\nRCPT TO:<bob@example.test>\r\n")
    assert [await client.reply() for _ in range(2)] == ["250 2.1.0 Ok", "250 2.1.5 Ok"]
    queued = await client.cmd(b"DATA")
    assert queued.startswith("354")
    queued = await client.cmd(MESSAGE + b".")
    # One session, counted once, though aiosmtpd calls connection_made again after TLS.
    assert sample("mailbus_smtpd_sessions_active", listener="smtp") == before + 1
    assert sample("mailbus_smtpd_connections_total", listener="smtp") == opened + 1
    await client.cmd("QUIT")
    await client.close()
    body = await body_of(js, queued.rsplit(" ", 1)[1])
    assert b"\r\n\t(using TLSv1.3 with cipher TLS_" in body.split(b"\r\n\tby ")[0] + b"\r\n\tby"
    for _ in range(50):
        if sample("mailbus_smtpd_sessions_active", listener="smtp") == before:
            break
        await asyncio.sleep(0.05)
    assert sample("mailbus_smtpd_sessions_active", listener="smtp") == before


async def test_tls_handshakes_are_bounded_and_failures_are_one_warning(
    door: Running, caplog: pytest.LogCaptureFixture
) -> None:
    timeouts = sample("mailbus_smtpd_refusals_total", stage="tls", rule="tls_timeout")
    failures = sample("mailbus_smtpd_refusals_total", stage="tls", rule="tls_failed")
    caplog.set_level(logging.INFO)
    silent = await RawSmtp.connect(address(door, "smtps"))  # never sends a ClientHello
    garbage = await RawSmtp.connect(address(door, "smtps"))
    await garbage.send(b"EHLO this is no TLS record\r\n")
    started = time.monotonic()
    assert await garbage.closed(within=5)
    assert await silent.closed(within=5)
    assert time.monotonic() - started < 4  # tls_handshake_timeout is 1s
    assert sample("mailbus_smtpd_refusals_total", stage="tls", rule="tls_timeout") == timeouts + 1
    assert sample("mailbus_smtpd_refusals_total", stage="tls", rule="tls_failed") == failures + 1
    records = [r for r in caplog.records if "TLS with" in r.getMessage()]
    assert [r.levelno for r in records] == [logging.WARNING, logging.WARNING]
    assert not any(r.levelno >= logging.ERROR or r.exc_info for r in caplog.records)
    # A STARTTLS handshake is bounded the same way.
    client = await RawSmtp.greeted(address(door, "smtp"))
    await ehlo(client)
    assert (await client.cmd("STARTTLS")).startswith("220 ")
    assert await client.closed(within=5)
    for c in (silent, garbage, client):
        await c.close()


# --- deadlines and junk --------------------------------------------------------------------


async def test_early_talker_is_refused_and_patient_client_greeted(door: Running) -> None:
    early = await RawSmtp.connect(address(door, "early"))
    await early.send(b"EHLO impatient.test\r\n")
    assert await early.reply() == "554 5.5.0 Error: talking before the greeting, closing connection"
    assert await early.closed()
    started = time.monotonic()
    patient = await RawSmtp.greeted(address(door, "early"))
    assert time.monotonic() - started >= 0.9  # pregreet_wait: 1s
    await ehlo(patient)
    await patient.close()


async def test_command_timeout_ends_the_session_with_421(door: Running) -> None:
    client = await RawSmtp.greeted(address(door, "plain"))
    started = time.monotonic()
    assert await client.reply(within=5) == "421 4.4.2 Error: timeout exceeded, closing connection"
    assert 1.5 < time.monotonic() - started < 4  # command_timeout: 2s
    assert await client.closed()


async def test_junk_commands_are_limited(door: Running) -> None:
    client = await RawSmtp.greeted(address(door, "plain"))
    await ehlo(client)
    for verb in ("NOOP", "RSET", "HELP", "NOOP", "RSET"):
        assert (await client.cmd(verb))[:1] in ("2", "5")
    assert code(await client.cmd("NOOP")) == "421 4.7.0"  # the sixth of max_junk_commands: 5
    assert await client.closed()


async def test_data_timeout_and_min_data_rate(door: Running, js: JetStreamContext) -> None:
    rule_before = sample("mailbus_smtpd_refusals_total", stage="data", rule="timeout")

    async def in_data() -> RawSmtp:
        client = await RawSmtp.greeted(address(door, "plain"))
        await ehlo(client)
        await client.send(b"MAIL FROM:<alice@remote.test>\r\nRCPT TO:<bob@example.test>\r\n")
        await client.reply()
        await client.reply()
        assert (await client.cmd("DATA")).startswith("354")
        return client

    silent = await in_data()  # nothing after the 354: data_timeout (1s)
    assert code(await silent.reply(within=5)) == "421 4.4.2"
    assert await silent.closed()
    slow = await in_data()  # each piece in time, but 100 B per 0.3 s is below 2000 B/s
    started = time.monotonic()
    answer = ""
    for _ in range(40):
        await slow.send(b"y" * 98 + b"\r\n")
        await asyncio.sleep(0.3)
        if slow.reader._buffer:  # type: ignore[attr-defined]  # the server spoke
            answer = await slow.reply()
            break
    assert code(answer) == "421 4.4.2"
    assert time.monotonic() - started < 5
    rules = sample("mailbus_smtpd_refusals_total", stage="data", rule="timeout")
    assert rules == rule_before + 2
    await stored_nothing(js)


# --- bounded memory: a message larger than what is kept in memory arrives intact ---------------


async def test_message_larger_than_the_memory_spool(door: Running, js: JetStreamContext) -> None:
    client = await RawSmtp.greeted(address(door, "plain"))
    await ehlo(client)
    await client.send(b"MAIL FROM:<alice@remote.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n")
    assert [code(await client.reply()) for _ in range(2)] == ["250 2.1.0", "250 2.1.5"]
    assert (await client.reply()).startswith("354")
    lines = [f"{i:07d} {'z' * 70}\r\n".encode() for i in range(1200)]  # ~94 KB
    content = b"Subject: big\r\n\r\n" + b"".join(lines)
    queued = await client.cmd(content + b".")
    assert queued.startswith("250 2.0.0 Ok: queued as ")
    body = await body_of(js, queued.rsplit(" ", 1)[1])
    assert body.endswith(b"\r\n" + content)
    await client.close()


# --- logs -------------------------------------------------------------------------------------


async def test_credentials_and_control_bytes_never_reach_the_log(
    door: Running, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    client = await RawSmtp.greeted(address(door, "submission"))
    await ehlo(client)
    # AUTH before STARTTLS is refused; a client that sends its lines anyway...
    assert code(await client.cmd("AUTH LOGIN")) == "530 5.7.0"
    user, password = base64.b64encode(b"alice").decode(), base64.b64encode(b"s3cret!").decode()
    await client.cmd(user)
    await client.cmd(password)
    await client.close()
    plain = await RawSmtp.greeted(address(door, "plain"))
    await ehlo(plain)
    await plain.cmd("MAIL FROM:<alice@remote.test>")
    await plain.cmd(b"RCPT TO:<x\rINFO forged@example.test>")
    await plain.close()
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert password not in text and user not in text
    assert "\r" not in text and "\x1b" not in text
    # aiosmtpd's protocol lines are DEBUG, shown only when debugging.
    assert not [r for r in caplog.records if r.name == "mail.log" and r.levelno <= logging.INFO]


async def test_a_handed_over_spool_outlives_the_session(js: JetStreamContext) -> None:
    """A client hanging up cancels its session while the shielded store still reads the
    spool: the session's release must leave the file open for it."""
    body = spool.Spool()
    content = b"Subject: late\r\n\r\n" + b"w" * 300_000  # past the in-memory part
    body.write(content)
    event = MessageReceived(
        event_id="01HANDEDOVER.received",
        queue_id="01HANDEDOVER",
        mail_from="alice@remote.test",
        recipients=(Recipient(address="bob@example.test"),),
        size=len(content) + 9,
        client=Client(ip="127.0.0.1"),
    )
    accepting = spool.accept(MessageStore(js), body, 0, b"X-Pre: 1\r\n", event)
    body.release()  # what the cancelled session does on its way out
    await accepting
    assert await body_of(js, "01HANDEDOVER") == b"X-Pre: 1\r\n" + content
