"""The DSN extension (RFC 3461) end to end over real SMTP.

A client speaks SMTP to ingress with RET/ENVID on MAIL and NOTIFY/ORCPT per
RCPT; policy, queue, delivery and the notifier run in this process on a real
nats-server; the relay host is an aiosmtpd sink that offers DSN or does not.
Reports to the sender go out through the same relay, so they land in the sink.
"""

from __future__ import annotations

import asyncio
import email
import smtplib
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from email import policy
from email.message import EmailMessage, Message

import pytest
from nats.js import JetStreamContext

from libs.common.config import Config, load_config_text
from libs.common.contract.events import DeliverySucceeded, MessageReceived, Recipient, ReportSent
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import Running
from tests.support.pipeline import pipeline, smtp_address
from tests.support.sink import Sink
from tests.support.streams import completed, event_consumers_idle, eventually, history

SENDER = "alice@sender.test"
NULL_SENDER = "<>"  # as aiosmtpd records MAIL FROM:<>
MESSAGE = (
    b"From: Alice <alice@sender.test>\r\n"
    b"To: Bob <bob@remote.test>\r\n"
    b"Subject: figures\r\n"
    b"Message-ID: <dsn-1@sender.test>\r\n"
    b"\r\n"
    b"The body, which RET=HDRS leaves out of a report.\r\n"
)


def config(sink_port: int) -> Config:
    return load_config_text(
        f"""
server: {{hostname: mx.example.test, local_domains: [example.test]}}
listeners:
  - {{name: smtp, protocol: smtp, address: "127.0.0.1:0", tls: none}}
ip_groups: {{inside: [127.0.0.1]}}
relay: {{mode: restricted, allowed_ip_group: inside, smtp_auth: false}}
security: {{require_sender_domain_dns: false}}
antispam: {{spf: false}}
policy: {{timeout: 2s}}
delivery:
  mode: relay
  relay_host: {{host: 127.0.0.1, port: {sink_port}}}
  tls: none
"""
    )


@dataclass
class Stack:
    sink: Sink
    running: dict[str, Running]

    @property
    def smtp(self) -> tuple[str, int]:
        return smtp_address(self.running)

    def reports(self) -> list[tuple[str, list[str], bytes]]:
        return [m for m in self.sink.received if m[0] == NULL_SENDER]


StartStack = Callable[..., Awaitable[Stack]]


@pytest.fixture
async def start_stack(
    nats_server: EmbeddedNats, sink_factory: Callable[..., tuple[Sink, int]]
) -> AsyncIterator[StartStack]:
    async with AsyncExitStack() as stacks:

        async def start(**sink_options: object) -> Stack:
            sink, port = sink_factory(**sink_options)
            running = await stacks.enter_async_context(pipeline(config(port), [nats_server.url]))
            return Stack(sink, running)

        yield start


@dataclass(frozen=True)
class Rcpt:
    address: str
    options: tuple[str, ...] = ()


def send(addr: tuple[str, int], mail_options: list[str], *rcpts: Rcpt) -> str:
    """One transaction with per-recipient options; returns the queue id."""
    with smtplib.SMTP(addr[0], addr[1], timeout=10) as client:
        client.ehlo("client.test")
        assert client.has_extn("dsn")
        code, reply = client.mail(SENDER, mail_options)
        assert code == 250, reply
        for rcpt in rcpts:
            code, reply = client.rcpt(rcpt.address, list(rcpt.options))
            assert code == 250, reply
        code, reply = client.data(MESSAGE)
        assert code == 250, reply
        return reply.decode().rsplit(" ", 1)[-1]


async def settled(js: JetStreamContext, qid: str) -> bool:
    """The message completed and every consumer has caught up with what followed."""
    if not await completed(js, qid):
        return False
    return await event_consumers_idle(js)


async def report_answers(js: JetStreamContext, qid: str) -> list[ReportSent]:
    return [e for e in await history(js, qid) if isinstance(e, ReportSent)]


def parse(raw: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(raw, policy=policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def delivery_status(report: EmailMessage) -> tuple[Message, list[Message]]:
    """(per-message fields, per-recipient field groups) of the message/delivery-status part."""
    part = list(report.iter_parts())[1]
    assert part.get_content_type() == "message/delivery-status"
    groups = [g for g in part.get_payload() if isinstance(g, Message)]
    return groups[0], groups[1:]


# --- tests ------------------------------------------------------------------------------


async def test_success_to_a_server_without_dsn_is_reported_as_relayed(
    start_stack: StartStack, js: JetStreamContext
) -> None:
    stack: Stack = await start_stack()
    qid = await asyncio.to_thread(
        send,
        stack.smtp,
        ["ENVID=QF+2B2026"],
        Rcpt("bob@remote.test", ("NOTIFY=SUCCESS", "ORCPT=rfc822;Bob@remote.test")),
    )
    received = next(e for e in await history(js, qid) if isinstance(e, MessageReceived))
    assert received.envid == "QF+2026" and received.ret is None
    assert received.recipients == (
        Recipient(address="bob@remote.test", orcpt="rfc822;Bob@remote.test", notify=("SUCCESS",)),
    )

    await eventually(lambda: _true(bool(stack.reports())), "the success report", within=60)
    (answer,) = await report_answers(js, qid)
    assert answer.kind == "success" and answer.report_queue_id is not None
    await eventually(lambda: settled(js, answer.report_queue_id or ""), "the report to complete")
    await asyncio.sleep(0.5)  # room for anything that should not come
    (report,) = stack.reports()
    assert report[1] == [SENDER]
    # The sink offers no DSN: nothing of it was sent there.
    assert not any("NOTIFY" in a or "ORCPT" in a for a in stack.sink.rcpt_args)
    assert not any("ENVID" in a or "RET" in a for a in stack.sink.mail_args)

    parsed = parse(report[2])
    per_message, (per_rcpt,) = delivery_status(parsed)
    assert per_message["Original-Envelope-Id"] == "QF+2026"
    assert per_rcpt["Action"] == "relayed"
    assert per_rcpt["Original-Recipient"] == "rfc822; Bob@remote.test"
    assert per_rcpt["Final-Recipient"] == "rfc822; bob@remote.test"
    assert list(parsed.iter_parts())[2].get_content_type() == "text/rfc822-headers"
    result = next(e for e in await history(js, qid) if isinstance(e, DeliverySucceeded))
    assert result.remote_dsn is False


async def test_a_server_with_dsn_gets_the_parameters_and_we_report_nothing(
    start_stack: StartStack, js: JetStreamContext
) -> None:
    stack: Stack = await start_stack(dsn=True)
    qid = await asyncio.to_thread(
        send,
        stack.smtp,
        ["RET=HDRS", "ENVID=QF+2B2026"],
        Rcpt("bob@remote.test", ("NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob+2Bx@remote.test")),
        Rcpt("carol@remote.test", ("NOTIFY=NEVER",)),
        Rcpt("dave@remote.test"),
    )
    await eventually(lambda: settled(js, qid), "the message to complete", within=60)
    await asyncio.sleep(0.5)  # room for a report that should not come

    (mail,) = stack.sink.mail_args
    assert mail.split()[0] == f"FROM:<{SENDER}>"
    assert {"RET=HDRS", "ENVID=QF+2B2026"} <= set(mail.split()[1:])
    by_rcpt = {a.split()[0]: a.split()[1:] for a in stack.sink.rcpt_args}
    assert by_rcpt == {
        "TO:<bob@remote.test>": ["NOTIFY=SUCCESS,FAILURE", "ORCPT=rfc822;Bob+2Bx@remote.test"],
        "TO:<carol@remote.test>": ["NOTIFY=NEVER"],
        "TO:<dave@remote.test>": [],
    }
    assert stack.reports() == []
    assert [m[1] for m in stack.sink.received] == [
        ["bob@remote.test", "carol@remote.test", "dave@remote.test"]
    ]
    events = await history(js, qid)
    assert all(e.remote_dsn for e in events if isinstance(e, DeliverySucceeded))
    assert not any(e.type == "RecipientsDelivered" for e in events)


async def test_never_on_a_refused_recipient_gives_no_report(
    start_stack: StartStack, js: JetStreamContext
) -> None:
    stack: Stack = await start_stack(replies={"bob@remote.test": "550 5.1.1 No such user here"})
    qid = await asyncio.to_thread(send, stack.smtp, [], Rcpt("bob@remote.test", ("NOTIFY=NEVER",)))
    await eventually(lambda: settled(js, qid), "the message to complete", within=60)
    (answer,) = await report_answers(js, qid)
    assert answer.kind == "failure" and answer.report_queue_id is None
    await asyncio.sleep(0.5)
    assert stack.reports() == []


async def test_failure_report_names_orcpt_and_envid_and_holds_only_the_headers(
    start_stack: StartStack, js: JetStreamContext
) -> None:
    stack: Stack = await start_stack(replies={"bob@remote.test": "550 5.1.1 No such user here"})
    qid = await asyncio.to_thread(
        send,
        stack.smtp,
        ["RET=HDRS", "ENVID=order+2042+20for+20Bob"],
        Rcpt("bob@remote.test", ("ORCPT=rfc822;Bob@Remote.test",)),
    )
    await eventually(lambda: _true(bool(stack.reports())), "the failure report", within=60)
    (answer,) = await report_answers(js, qid)
    await eventually(lambda: settled(js, answer.report_queue_id or ""), "the report to complete")
    await asyncio.sleep(0.5)
    (report,) = stack.reports()
    parsed = parse(report[2])
    per_message, (per_rcpt,) = delivery_status(parsed)
    assert per_message["Original-Envelope-Id"] == "order 42 for Bob"
    assert per_rcpt["Original-Recipient"] == "rfc822; Bob@Remote.test"
    assert per_rcpt["Action"] == "failed" and per_rcpt["Status"] == "5.1.1"
    original = list(parsed.iter_parts())[2]
    assert original.get_content_type() == "text/rfc822-headers"
    assert b"Subject: figures" in report[2]
    assert b"RET=HDRS leaves out" not in report[2]


# The longest ORCPT RFC 3461 allows (500 characters) makes RCPT longer than 512.
LONGEST_ORCPT = "ORCPT=rfc822;" + "b" * 481 + "@remote.test"

COMMAND_CASES = [
    # (MAIL parameters, RCPT parameters or None for MAIL alone, the reply it starts with)
    ("RET=FULL RET=HDRS", None, "501 5.5.4 RET given twice"),
    ("RET=BODY", None, "501 5.5.4 RET must be FULL or HDRS"),
    ("RET", None, "501 5.5.4 RET needs a value"),
    ("ENVID=" + "x" * 101, None, "501 5.5.4 ENVID is longer than 100 characters"),
    ("ENVID=a+0D+0Ab", None, "501 5.5.4 ENVID is not valid xtext"),
    ("ENVID=a+2", None, "501 5.5.4 ENVID is not valid xtext"),
    ("ret=hdrs ENVID=" + "x" * 100, None, "250 2.1.0"),
    ("", "NOTIFY=NEVER,SUCCESS", "501 5.5.4 NOTIFY=NEVER cannot be combined"),
    ("", "NOTIFY=SOMETIMES", "501 5.5.4 NOTIFY keyword SOMETIMES unknown"),
    ("", "NOTIFY=SUCCESS NOTIFY=DELAY", "501 5.5.4 NOTIFY given twice"),
    ("", "ORCPT=bob@remote.test", "501 5.5.4 ORCPT is not valid"),
    ("", "ORCPT=rfc822;b+0Db", "501 5.5.4 ORCPT is not valid"),
    ("", "ORCPT=rfc822;" + "b" * 482 + "@remote.test", "501 5.5.4 ORCPT is longer than 500"),
    ("", "notify=delay,failure " + LONGEST_ORCPT, "250 2.1.5"),
    # RET belongs to MAIL: on RCPT it is an unknown parameter, as RFC 5321 says.
    ("", "RET=FULL", "555 5.5.4"),
]


def command_reply(addr: tuple[str, int], mail: str, rcpt: str | None, ehlo: bool = True) -> str:
    """The reply to MAIL (rcpt None) or to RCPT after an accepted MAIL, in a new session."""
    with smtplib.SMTP(*addr, timeout=10) as client:
        if ehlo:
            client.ehlo("client.test")
            assert client.has_extn("dsn")
        else:
            client.helo("client.test")
        code, reply = client.docmd("MAIL", f"FROM:<{SENDER}> {mail}".strip())
        if rcpt is not None:
            assert code == 250, reply
            code, reply = client.docmd("RCPT", f"TO:<bob@remote.test> {rcpt}".strip())
        return f"{code} {reply.decode()}"


async def test_dsn_parameters_are_checked(start_stack: StartStack) -> None:
    stack = await start_stack()
    for mail, rcpt, expected in COMMAND_CASES:
        reply = await asyncio.to_thread(command_reply, stack.smtp, mail, rcpt)
        assert reply.startswith(expected), (mail, rcpt, reply)
    # After HELO there are no parameters at all (RFC 5321 section 4.1.1.11).
    for mail, rcpt in (("RET=FULL", None), ("", "NOTIFY=NEVER")):
        reply = await asyncio.to_thread(command_reply, stack.smtp, mail, rcpt, False)
        assert reply.startswith("501 5.5.4 Syntax"), (mail, rcpt, reply)


async def _true(value: bool) -> bool:
    return value
