"""Relay control, SMTP AUTH, POP3-before-SMTP and smuggling over real SMTP sessions.

Policy, ingress, queue and delivery run in this process against a real
nats-server, one stack per relay mode for the whole module; relayed mail
reaches a real aiosmtpd sink. POP3-before-SMTP grants come from real POP3
logins (STLS, USER/PASS) on the ingress's POP3 listener; an expired grant is
one seen through policy's clock moved past its end. Clients bind to different
loopback addresses to be inside or outside `relay.allowed_ip_group`:

    127.0.0.2-.7  inside (127.0.0.6 also in hide_local_ip_group)
    127.0.1.x     outside
"""

from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path

import pytest
import pytest_asyncio
from nats.js import JetStreamContext

from libs.common.contract import subjects
from libs.common.contract.events import MessageReceived, parse_event
from tests.support.stack import (
    PASSWORD,
    PASSWORD_HASH,
    POP3From,
    Stack,
    failed_logins,
    grant_of,
    running_stack,
    unverified,
)
from tests.support.streams import eventually
from tests.unit.test_policy_addresses import FORMS, Form
from tests.unit.test_policy_relay import RECIPIENTS, expected

pytestmark = pytest.mark.asyncio(loop_scope="module")

GRANT_MINUTES = 30

# (inside the allowed group?, grant) -> client address
CLIENTS = {
    (True, "none"): "127.0.0.2",
    (True, "valid"): "127.0.0.3",
    (True, "expired"): "127.0.0.4",
    (False, "none"): "127.0.1.2",
    (False, "valid"): "127.0.1.3",
    (False, "expired"): "127.0.1.4",
}
INSIDE = "127.0.0.2"
HIDDEN = "127.0.0.6"


def config_text(mode: str, sink_port: int) -> str:
    return f"""
server: {{hostname: mx.example.test, local_domains: [example.test], postmaster: alice@example.test}}
listeners:
  - {{name: plain, address: "127.0.0.1:0", tls: none}}
  - {{name: smtp, address: "127.0.0.1:0", tls: starttls}}
  - {{name: submission, address: "127.0.0.1:0", tls: starttls, require_auth: true}}
  - {{name: smtps, address: "127.0.0.1:0", tls: implicit, require_auth: true}}
  - {{name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: starttls}}
ip_groups:
  inside: [127.0.0.2-127.0.0.7]
  hidden: [{HIDDEN}]
users:
  - address: alice@example.test
    password_hash: "{PASSWORD_HASH}"
    aliases: [a.liddell@example.test]
  - address: bob@example.test
relay:
  mode: {mode}
  allowed_ip_group: inside
  smtp_auth: true
  pop3_before_smtp: {{enabled: true, minutes: {GRANT_MINUTES}}}
  hide_local_ip_group: hidden
security: {{require_sender_domain_dns: false, max_failed_commands: 0}}  # many refusals per session
antispam: {{spf: false}}
policy: {{timeout: 5s}}
delivery:
  mode: relay
  relay_host: {{host: 127.0.0.1, port: {sink_port}}}
  tls: none
"""


def pop3_login(addr: tuple[str, int], source: str) -> None:
    """A real POP3 login, the way a mail client checks for mail before it sends."""
    client = POP3From(addr, source)
    client.stls(unverified())
    client.user("alice@example.test")
    client.pass_(PASSWORD)
    client.quit()


async def start_stack(mode: str, tmp: Path, services: tuple[str, ...]) -> AsyncIterator[Stack]:
    async with running_stack(tmp, lambda port: config_text(mode, port), services) as stack:
        for (_, kind), ip in CLIENTS.items():
            if kind != "none":
                await asyncio.to_thread(pop3_login, stack.address("pop3"), ip)
        granted = [ip for (_, kind), ip in CLIENTS.items() if kind != "none"]

        async def all_granted() -> bool:
            return all([await grant_of(stack.js, ip) for ip in granted])

        await eventually(all_granted, "the grants to be stored")
        yield stack


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def restricted(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("restricted")
    async for stack in start_stack("restricted", tmp, ("policy", "queue", "delivery", "ingress")):
        yield stack


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def open_relay(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    async for stack in start_stack("open", tmp_path_factory.mktemp("open"), ("policy", "ingress")):
        yield stack


def reply_text(reply: tuple[int, bytes]) -> str:
    code, text = reply
    return f"{code} {text.decode()}"


# --- the matrix of the issue ----------------------------------------------------------------


def rcpt_replies(addr: tuple[str, int], source: str, authed: bool) -> list[str]:
    """One STARTTLS session: optionally AUTH, then MAIL and one RCPT per recipient kind."""
    with smtplib.SMTP(*addr, source_address=(source, 0), timeout=10) as client:
        client.ehlo("client.test")
        client.starttls(context=unverified())
        client.ehlo("client.test")
        if authed:
            client.login("alice@example.test", PASSWORD)
        assert client.mail("sender@outside.test")[0] == 250
        replies = [client.docmd("RCPT", f"TO:<{rcpt}>") for rcpt in RECIPIENTS.values()]
        client.quit()
    return [reply_text(r) for r in replies]


CASES = [
    (inside, authed, kind)
    for inside in (True, False)
    for authed in (True, False)
    for kind in ("none", "valid", "expired")
]


def case_id(case: tuple[bool, bool, str]) -> str:
    inside, authed, kind = case
    return f"{'inside' if inside else 'outside'}-{'auth' if authed else 'anon'}-grant_{kind}"


async def check_matrix(stack: Stack, mode: str, case: tuple[bool, bool, str]) -> None:
    inside, authed, kind = case
    source = CLIENTS[(inside, kind)]
    if kind == "expired":
        stack.clock.offset = timedelta(minutes=GRANT_MINUTES, seconds=5)
    try:
        replies = await asyncio.to_thread(rcpt_replies, stack.address("smtp"), source, authed)
    finally:
        stack.clock.offset = timedelta(0)
    for (rcpt_kind, rcpt), reply in zip(RECIPIENTS.items(), replies, strict=True):
        want, _rule = expected(mode, inside, authed, kind, rcpt_kind)
        assert reply.startswith(want), (rcpt, reply, want)


@pytest.mark.parametrize("case", CASES, ids=case_id)
async def test_matrix_restricted(restricted: Stack, case: tuple[bool, bool, str]) -> None:
    await check_matrix(restricted, "restricted", case)


@pytest.mark.parametrize("case", CASES, ids=case_id)
async def test_matrix_open(open_relay: Stack, case: tuple[bool, bool, str]) -> None:
    await check_matrix(open_relay, "open", case)


# --- address forms ------------------------------------------------------------------------


class Raw:
    """A byte-exact SMTP client on a plain socket: nothing rewritten, nothing added."""

    def __init__(self, addr: tuple[str, int], source: str) -> None:
        self.sock = socket.create_connection(addr, timeout=10, source_address=(source, 0))
        self.rfile = self.sock.makefile("rb")
        self.greeting = self.reply()

    def reply(self) -> str:
        while True:
            line = self.rfile.readline()
            if not line:
                raise EOFError("connection closed")
            if line[3:4] != b"-":
                return line.decode("utf-8", "replace").rstrip("\r\n")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cmd(self, line: str) -> str:
        self.send(line.encode() + b"\r\n")
        return self.reply()

    def quit_and_rest(self) -> list[str]:
        """QUIT, then every line until the server closes: the 221 and nothing else."""
        self.send(b"QUIT\r\n")
        rest = self.rfile.read()
        self.close()
        return rest.decode("utf-8", "replace").splitlines()

    def close(self) -> None:
        self.rfile.close()
        self.sock.close()


def form_replies(addr: tuple[str, int], source: str, forms: list[Form]) -> list[str]:
    raw = Raw(addr, source)
    try:
        assert raw.cmd("EHLO client.test").startswith("250")
        assert raw.cmd("MAIL FROM:<sender@outside.test> SMTPUTF8").startswith("250")
        return [raw.cmd(f"RCPT TO:{form.rcpt}") for form in forms]
    finally:
        raw.close()


@pytest.mark.parametrize("inside", [True, False], ids=["inside", "outside"])
async def test_every_address_form(restricted: Stack, inside: bool) -> None:
    source = INSIDE if inside else "127.0.1.20"
    replies = await asyncio.to_thread(form_replies, restricted.address("plain"), source, FORMS)
    for form, reply in zip(FORMS, replies, strict=True):
        want = form.inside if inside else form.outside
        assert reply.startswith(want + " "), (form.what, form.rcpt, reply)


# --- SMTP smuggling -------------------------------------------------------------------------

# Every end-of-data form of SEC Consult's research (December 2023), as hannob/smtpsmug sends them.
SMUGGLING = {
    "LF.LF": b"\n.\n",
    "CR.CR": b"\r.\r",
    "CR.LF": b"\r.\n",
    "LF.CR": b"\n.\r",
    "LF.CRLF": b"\n.\r\n",
    "CRLF.LF": b"\r\n.\n",
    "CR.CRLF": b"\r.\r\n",
    "CRLF.CR": b"\r\n.\r",
    "CRLF NUL.CRLF": b"\r\n\x00.\r\n",
    "CRLF.NUL CRLF": b"\r\n.\x00\r\n",
}
SMUGGLED = (
    b"MAIL FROM:<ceo@bank.test>\r\n"
    b"RCPT TO:<victim@remote.test>\r\n"
    b"DATA\r\n"
    b"From: ceo@bank.test\r\n"
    b"Subject: smuggled\r\n"
    b"\r\n"
    b"smuggled message\r\n"
    b".\r\n"
)


def smuggle(addr: tuple[str, int], n: int, ending: bytes) -> list[str]:
    """A smuggling attempt, then an honest message on the same session: every reply."""
    raw = Raw(addr, INSIDE)
    replies = [
        raw.cmd("EHLO attacker.test"),
        raw.cmd("MAIL FROM:<attacker@outside.test>"),
        raw.cmd("RCPT TO:<victim@remote.test>"),
        raw.cmd("DATA"),
    ]
    raw.send(b"From: attacker@outside.test\r\nSubject: first\r\n\r\nfirst" + ending + SMUGGLED)
    replies.append(raw.reply())
    replies += [
        raw.cmd(f"MAIL FROM:<honest{n}@outside.test>"),
        raw.cmd("RCPT TO:<victim@remote.test>"),
        raw.cmd("DATA"),
        raw.cmd(f"From: honest{n}@outside.test\r\nSubject: honest {n}\r\n\r\nhello\r\n."),
    ]
    return replies + raw.quit_and_rest()


async def received_events(js: JetStreamContext) -> list[MessageReceived]:
    found: list[MessageReceived] = []
    wanted = subjects.events_of_type("MessageReceived")
    info = await js.stream_info(subjects.EVENTS_STREAM, subjects_filter=wanted)
    count = sum((info.state.subjects or {}).values())
    sub = await js.subscribe(wanted, ordered_consumer=True)
    try:
        for _ in range(count):
            msg = await sub.next_msg(timeout=5)
            event = parse_event(msg.data)
            assert isinstance(event, MessageReceived)
            found.append(event)
    finally:
        await sub.unsubscribe()
    return found


async def test_smuggling_never_ends_a_message_or_starts_one(restricted: Stack) -> None:
    addr = restricted.address("plain")
    for n, (name, ending) in enumerate(SMUGGLING.items()):
        replies = await asyncio.to_thread(smuggle, addr, n, ending)
        status = "5.6.0" if b"\x00" in ending else "5.6.11"
        assert [r[:3] for r in replies] == [
            "250", "250", "250", "354", "550", "250", "250", "354", "250", "221",
        ], (name, replies)  # fmt: skip
        assert replies[4].startswith(f"550 {status} "), (name, replies[4])

    honest = {f"honest{n}@outside.test" for n in range(len(SMUGGLING))}

    async def all_delivered() -> bool:
        return {m for m, _, _ in restricted.sink.received} >= honest

    await eventually(all_delivered, "the honest messages at the sink")
    senders = [mail_from for mail_from, _, _ in restricted.sink.received]
    assert "attacker@outside.test" not in senders and "ceo@bank.test" not in senders
    for mail_from, rcpts, content in restricted.sink.received:
        if mail_from in honest:
            assert senders.count(mail_from) == 1
            assert rcpts == ["victim@remote.test"]
            assert b"smuggled" not in content and b"first" not in content
    stored = {e.mail_from for e in await received_events(restricted.js)}
    assert not stored & {"attacker@outside.test", "ceo@bank.test"}


# --- hide_local_ip_group --------------------------------------------------------------------


def send_from(addr: tuple[str, int], source: str, sender: str, helo: str) -> None:
    with smtplib.SMTP(*addr, source_address=(source, 0), local_hostname=helo, timeout=10) as c:
        c.sendmail(sender, ["victim@remote.test"], b"Subject: hi\r\n\r\nhi\r\n")


async def test_hidden_group_received_header(restricted: Stack) -> None:
    addr = restricted.address("plain")
    await asyncio.to_thread(send_from, addr, HIDDEN, "hidden@outside.test", "laptop.corp.test")
    await asyncio.to_thread(send_from, addr, INSIDE, "shown@outside.test", "desk.corp.test")

    def content_from(sender: str) -> bytes | None:
        return next((c for m, _, c in restricted.sink.received if m == sender), None)

    async def both() -> bool:
        return all(content_from(s) for s in ("hidden@outside.test", "shown@outside.test"))

    await eventually(both, "both messages at the sink")
    hidden = content_from("hidden@outside.test")
    shown = content_from("shown@outside.test")
    assert hidden is not None and shown is not None
    assert hidden.startswith(b"Received: by mx.example.test (mailbus) with ESMTP id ")
    assert b"\tfor <victim@remote.test>; " in hidden.split(b"\r\nSubject:")[0]
    assert HIDDEN.encode() not in hidden and b"laptop.corp.test" not in hidden
    assert shown.startswith(b"Received: from desk.corp.test (127.0.0.2 [127.0.0.2])\r\n")


# --- listeners and AUTH ---------------------------------------------------------------------


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


async def test_submission_needs_starttls_then_auth(restricted: Stack) -> None:
    source = "127.0.1.30"  # outside: only AUTH lets it relay

    def submit() -> list[str]:
        with smtplib.SMTP(*restricted.address("submission"), source_address=(source, 0)) as c:
            c.ehlo("laptop.test")
            assert c.has_extn("starttls") and not c.has_extn("auth")
            replies = [c.docmd("MAIL", "FROM:<alice@example.test>")]
            c.starttls(context=unverified())
            c.ehlo("laptop.test")
            assert set(c.esmtp_features["auth"].split()) == {"PLAIN", "LOGIN"}
            replies.append(c.docmd("MAIL", "FROM:<alice@example.test>"))
            replies.append(c.docmd("AUTH", "PLAIN " + b64("\0alice@example.test\0wrong")))
            replies.append(c.docmd("AUTH", "LOGIN " + b64("alice@example.test")))
            replies.append(c.docmd(b64(PASSWORD)))
            c.sendmail("alice@example.test", ["victim@remote.test"], b"Subject: sub\r\n\r\nx\r\n")
            return [reply_text(r) for r in replies]

    replies = await asyncio.to_thread(submit)
    assert replies == [
        "530 5.7.0 Must issue a STARTTLS command first",
        "530 5.7.0 Authentication required",
        "535 5.7.8 Authentication credentials invalid",
        "334 UGFzc3dvcmQ6",
        "235 2.7.0 Authentication successful",
    ]
    assert await failed_logins(restricted.js, source) == 1

    def submitted() -> bytes | None:
        found = [c for m, _, c in restricted.sink.received if b"Subject: sub" in c]
        return found[0] if found else None

    async def arrived() -> bool:
        return submitted() is not None

    await eventually(arrived, "the submitted message at the sink")
    content = submitted()
    assert content is not None and b"with ESMTPSA id " in content
    events = [e for e in await received_events(restricted.js) if e.client.listener == "submission"]
    assert [(e.auth_user, e.client.ip) for e in events] == [("alice@example.test", source)]
    assert "authenticated" in events[0].policy_rules


async def test_implicit_tls_listener(restricted: Stack) -> None:
    source = "127.0.1.31"

    def over_tls() -> list[str]:
        host, port = restricted.address("smtps")
        with smtplib.SMTP_SSL(host, port, context=unverified(), source_address=(source, 0)) as c:
            c.ehlo("laptop.test")
            assert not c.has_extn("starttls") and "PLAIN" in c.esmtp_features["auth"]
            replies = [c.docmd("MAIL", "FROM:<alice@example.test>")]
            replies.append(c.login("ALICE@example.test", PASSWORD))
            replies.append(c.mail("alice@example.test"))
            replies.append(c.rcpt("<victim@remote.test>"))
            replies.append(c.data(b"Subject: implicit\r\n\r\nx\r\n"))
            return [reply_text(r) for r in replies]

    replies = await asyncio.to_thread(over_tls)
    assert replies[:4] == [
        "530 5.7.0 Authentication required",
        "235 2.7.0 Authentication successful",
        "250 2.1.0 Ok",
        "250 2.1.5 Ok",
    ]
    assert replies[4].startswith("250 2.0.0 Ok: queued as ")
    events = [e for e in await received_events(restricted.js) if e.client.listener == "smtps"]
    assert [e.auth_user for e in events] == ["alice@example.test"]
    assert events[0].tls is not None


async def test_auth_is_refused_in_plain_text(restricted: Stack) -> None:
    source = "127.0.1.32"

    def try_plain(listener: str) -> tuple[bool, str]:
        with smtplib.SMTP(*restricted.address(listener), source_address=(source, 0)) as c:
            c.ehlo("laptop.test")
            offered = c.has_extn("auth")
            reply = c.docmd("AUTH", "PLAIN " + b64(f"\0alice@example.test\0{PASSWORD}"))
            return offered, reply_text(reply)

    for listener in ("plain", "smtp"):
        offered, reply = await asyncio.to_thread(try_plain, listener)
        assert not offered
        assert reply == "538 5.7.11 Encryption required for requested authentication mechanism"
    assert await failed_logins(restricted.js, source) == 0  # never reached policy


async def test_failed_logins_are_counted_per_address(restricted: Stack) -> None:
    source = "127.0.1.33"

    def fail(times: int) -> list[str]:
        with smtplib.SMTP(*restricted.address("smtp"), source_address=(source, 0)) as c:
            c.starttls(context=unverified())
            c.ehlo("laptop.test")
            return [
                reply_text(c.docmd("AUTH", "PLAIN " + b64(f"\0{user}\0{PASSWORD}x")))
                for user in ["alice@example.test", "nobody@example.test"][:times]
            ]

    assert await asyncio.to_thread(fail, 2) == ["535 5.7.8 Authentication credentials invalid"] * 2
    assert await failed_logins(restricted.js, source) == 2
    assert await failed_logins(restricted.js, "127.0.1.34") == 0
