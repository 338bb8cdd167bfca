"""SPF at MAIL and SpamAssassin at DATA over real SMTP, with a real DNS server and spamd.

Two stacks share the module's nats-servers, DNS server and spamd:

- `main`: the defaults (SPF fail refused, softfail tagged), spamd the real one,
  spamd_max_size 20 KiB, spamd_failure accept; 127.0.0.5 is the relay group,
  alice logs in over SMTPS. Its last test stops spamd.
- `strict`: relay.antispam_for_allowed_group true, spamd a listener that never
  answers (slower than spamd_timeout), spamd_failure tempfail.

The DNS zone has one domain per SPF result: pass, fail, softfail, neutral, a
time-out (temperror), eleven look-ups (permerror, RFC 7208 section 4.6.4), an
include chain and an `exists:` macro on the client address.
"""

from __future__ import annotations

import asyncio
import contextlib
import smtplib
import socket
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from libs.common.contract import subjects
from libs.common.contract.antispam import AntispamResults
from libs.common.contract.events import MessageReceived, Pop3LoginSucceeded
from libs.common.runtime.policy_client import publish_pop3_login
from tests.support.dns import DnsServer
from tests.support.spamd import GTUBE, Spamd
from tests.support.stack import (
    PASSWORD,
    PASSWORD_HASH,
    Stack,
    grant_of,
    running_stack,
    unverified,
)
from tests.support.streams import eventually, history

pytestmark = pytest.mark.asyncio(loop_scope="module")

HOST = "mx.example.test"
TRUSTED = "127.0.0.5"
POP3_USER_IP = "127.0.0.6"
OUTSIDE = "127.0.0.1"
SCAN_LIMIT = 20 * 1024


def zone(dns: DnsServer) -> None:
    spf = {
        "pass.test": "v=spf1 ip4:127.0.0.0/8 -all",
        "fail.test": "v=spf1 -all",
        "softfail.test": "v=spf1 ~all",
        "neutral.test": "v=spf1 ?all",
        "chain.test": "v=spf1 include:one.chain.test -all",
        "one.chain.test": "v=spf1 include:two.chain.test -all",
        "two.chain.test": "v=spf1 ip4:127.0.0.0/8 -all",
        "macro.test": "v=spf1 exists:%{i}._spf.macro.test -all",
        "many.test": "v=spf1 " + " ".join(f"a:h{n}.many.test" for n in range(11)) + " -all",
        "helo.test": "v=spf1 -all",
    }
    for name, record in spf.items():
        dns.add(name, "TXT", f'"{record}"')
    dns.add("127.0.0.1._spf.macro.test", "A", "127.0.0.2")
    for n in range(11):
        dns.add(f"h{n}.many.test", "A", "192.0.2.99")
    dns.timeout("slow.test")


def config_text(sink: int, dns: int, spamd: str, strict: bool) -> str:
    return f"""
server: {{hostname: {HOST}, local_domains: [example.test]}}
listeners:
  - {{name: smtp, address: "127.0.0.1:0", tls: none}}
  - {{name: smtps, address: "127.0.0.1:0", tls: implicit}}
ip_groups: {{inside: ["{TRUSTED}"]}}
users:
  - {{address: alice@example.test, password_hash: "{PASSWORD_HASH}"}}
relay:
  mode: open
  allowed_ip_group: inside
  antispam_for_allowed_group: {str(strict).lower()}
  pop3_before_smtp: {{enabled: true, minutes: 30}}
security: {{require_sender_domain_dns: false}}
dns: {{servers: ["127.0.0.1:{dns}"], timeout: 1s}}
antispam:
  spamd: "{spamd}"
  spamd_max_size: {SCAN_LIMIT}
  spamd_timeout: {"1s" if strict else "20s"}
  spamd_failure: {"tempfail" if strict else "accept"}
policy: {{timeout: 5s}}
delivery:
  mode: relay
  relay_host: {{host: 127.0.0.1, port: {sink}}}
  tls: none
"""


@pytest.fixture(scope="module")
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        zone(server)
        yield server


@pytest.fixture(scope="module")
def spamd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Spamd]:
    server = Spamd(home=tmp_path_factory.mktemp("spamd"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def silent_spamd() -> Iterator[str]:
    """A listener that takes connections and never answers: a hung spamd."""
    listener = socket.create_server(("127.0.0.1", 0))
    try:
        yield f"127.0.0.1:{listener.getsockname()[1]}"
    finally:
        listener.close()


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def main(
    tmp_path_factory: pytest.TempPathFactory, dns: DnsServer, spamd: Spamd
) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("main")
    text = lambda sink: config_text(sink, dns.port, spamd.address, strict=False)  # noqa: E731
    async with running_stack(tmp, text, ["policy", "queue", "delivery", "ingress"]) as stack:
        yield stack


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def strict(
    tmp_path_factory: pytest.TempPathFactory, dns: DnsServer, silent_spamd: str
) -> AsyncIterator[Stack]:
    tmp = tmp_path_factory.mktemp("strict")
    text = lambda sink: config_text(sink, dns.port, silent_spamd, strict=True)  # noqa: E731
    # Its tests are all refused before anything is stored: no queue (one per process) needed.
    async with running_stack(tmp, text, ["policy", "ingress"]) as stack:
        yield stack


# --- clients ---------------------------------------------------------------------------------


def message(subject: str, body: bytes = b"Lunch tomorrow at noon?\r\n") -> bytes:
    return (
        b"From: someone@pass.test\r\n"
        b"To: bob@remote.test\r\n"
        b"Subject: " + subject.encode() + b"\r\n"
        b"Date: Tue, 01 Dec 2026 22:00:00 +0000\r\n"
        b"Message-ID: <" + subject.replace(" ", ".").encode() + b"@pass.test>\r\n"
        b"\r\n" + body
    )


def mail_from(
    addr: tuple[str, int], sender: str, source: str = OUTSIDE, helo: str = "client.test"
) -> tuple[int, str]:
    with smtplib.SMTP(addr[0], addr[1], source_address=(source, 0), timeout=20) as client:
        client.ehlo(helo)
        code, text = client.mail(sender)
        return code, text.decode()


def send(
    addr: tuple[str, int],
    sender: str,
    content: bytes,
    source: str = OUTSIDE,
    login: bool = False,
) -> tuple[int, str]:
    """The reply to the end of DATA (or the first refusal before it)."""
    client = (
        smtplib.SMTP_SSL(*addr, source_address=(source, 0), timeout=30, context=unverified())
        if login
        else smtplib.SMTP(*addr, source_address=(source, 0), timeout=30)
    )
    with client:
        client.ehlo("client.test")
        if login:
            client.login("alice@example.test", PASSWORD)
        code, text = client.mail(sender)
        if code != 250:
            return code, text.decode()
        code, text = client.rcpt("bob@remote.test")
        assert code == 250, text
        code, text = client.data(content)
        return code, text.decode()


async def delivered(stack: Stack, subject: str) -> bytes:
    """The message the relay sink got with this subject."""
    wanted = b"Subject: " + subject.encode() + b"\r\n"

    async def arrived() -> bool:
        return any(wanted in content for _, _, content in stack.sink.received)

    await eventually(arrived, f"the sink to get {subject!r}")
    return next(c for _, _, c in stack.sink.received if wanted in c)


async def received_event(js: JetStreamContext, reply: str) -> MessageReceived:
    qid = reply.rsplit(" ", 1)[1]
    events = await history(js, qid)
    found = [e for e in events if isinstance(e, MessageReceived)]
    assert found, f"no MessageReceived for {qid}"
    return found[0]


def head(content: bytes) -> str:
    return content.partition(b"\r\n\r\n")[0].decode()


async def antispam_of(stack: Stack, reply: str) -> AntispamResults:
    event = await received_event(stack.js, reply)
    assert event.antispam is not None
    return event.antispam


# --- SPF -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "code", "status"),
    [
        ("a@pass.test", 250, "2.1.0"),
        ("a@fail.test", 550, "5.7.23"),
        ("a@softfail.test", 250, "2.1.0"),  # spf_softfail_action: tag
        ("a@neutral.test", 250, "2.1.0"),
        ("a@slow.test", 451, "4.7.24"),  # temperror
        ("a@many.test", 250, "2.1.0"),  # permerror: recorded, accepted
        ("a@chain.test", 250, "2.1.0"),
        ("a@macro.test", 250, "2.1.0"),
        ("a@nospf.test", 250, "2.1.0"),  # none: no record at all
    ],
)
async def test_spf_result_decides_mail_from(
    main: Stack, sender: str, code: int, status: str
) -> None:
    got, text = await asyncio.to_thread(mail_from, main.address("smtp"), sender)
    assert (got, text.split(" ", 1)[0]) == (code, status), text


async def test_null_sender_is_checked_by_its_helo_name(main: Stack) -> None:
    got, text = await asyncio.to_thread(mail_from, main.address("smtp"), "", helo="helo.test")
    assert got == 550 and text.startswith("5.7.23"), text


@pytest.mark.parametrize(
    ("sender", "result"),
    [
        ("a@softfail.test", "softfail"),
        ("a@many.test", "permerror"),
        ("a@chain.test", "pass"),
        ("a@macro.test", "pass"),
        ("a@neutral.test", "neutral"),
    ],
)
async def test_accepted_mail_carries_its_spf_result(main: Stack, sender: str, result: str) -> None:
    subject = f"spf {result} {sender}"
    code, reply = await asyncio.to_thread(send, main.address("smtp"), sender, message(subject))
    assert code == 250, reply
    header = head(await delivered(main, subject))
    assert f"Authentication-Results: {HOST}; spf={result} smtp.mailfrom={sender}" in header
    assert f"Received-SPF: {result} ({HOST}: " in header
    assert (await antispam_of(main, reply)).spf is not None


async def test_a_forged_authentication_results_in_our_name_is_removed(main: Stack) -> None:
    subject = "forged results"
    forged = (
        f"Authentication-Results: {HOST.upper()}; spf=pass smtp.mailfrom=a@fail.test\r\n"
        "Authentication-Results: elsewhere.test; spf=fail\r\n"
    ).encode()
    code, reply = await asyncio.to_thread(
        send, main.address("smtp"), "a@pass.test", forged + message(subject)
    )
    assert code == 250, reply
    header = head(await delivered(main, subject))
    assert header.lower().count(f"authentication-results: {HOST}".lower()) == 1
    assert f"Authentication-Results: {HOST}; spf=pass smtp.mailfrom=a@pass.test" in header
    assert "Authentication-Results: elsewhere.test; spf=fail" in header


# --- spamd -----------------------------------------------------------------------------------


async def test_gtube_is_refused_and_not_stored(main: Stack) -> None:
    subject = "gtube"
    code, reply = await asyncio.to_thread(
        send, main.address("smtp"), "a@pass.test", message(subject, GTUBE + b"\r\n")
    )
    assert (code, reply) == (550, "5.7.1 Message refused as spam")
    # Every body the stream still holds (a handful: the module's messages so far).
    state = (await main.js.stream_info(subjects.BODIES_STREAM)).state
    for seq in range(state.first_seq, state.last_seq + 1):
        with contextlib.suppress(NotFoundError):  # deleted once delivered
            stored = await main.js.get_msg(subjects.BODIES_STREAM, seq)
            assert b"Subject: gtube\r\n" not in (stored.data or b"")


async def test_clean_mail_is_tagged_with_a_low_score(main: Stack) -> None:
    subject = "clean mail"
    code, reply = await asyncio.to_thread(
        send, main.address("smtp"), "a@pass.test", message(subject)
    )
    assert code == 250, reply
    content = await delivered(main, subject)
    header = head(content)
    assert "X-Spam-Flag" not in header
    assert "X-Spam-Status: No, score=" in header
    assert "required=5.0 tests=" in header
    spam = (await antispam_of(main, reply)).spam
    assert spam is not None and spam.result == "clean"
    assert spam.score is not None and spam.score < 5.0
    # The headers docs/antispam.md shows, as a run wrote them (pytest -s prints them).
    print(header.split("\r\nReceived: ")[0].replace("\r\n", "\n"))


async def test_a_message_over_spamd_max_size_passes_unscanned(main: Stack) -> None:
    subject = "too big to scan"
    body = GTUBE + b"\r\n" + b"filler line of text\r\n" * (SCAN_LIMIT // 20)
    code, reply = await asyncio.to_thread(
        send, main.address("smtp"), "a@pass.test", message(subject, body)
    )
    assert code == 250, reply
    assert "X-Spam-" not in head(await delivered(main, subject))
    spam = (await antispam_of(main, reply)).spam
    assert spam is not None and (spam.result, spam.unscanned) == ("unscanned", "too_big")


# --- who is skipped --------------------------------------------------------------------------


async def test_the_allowed_group_skips_spf_and_spamd(main: Stack) -> None:
    subject = "from the relay group"
    code, reply = await asyncio.to_thread(
        send, main.address("smtp"), "a@fail.test", message(subject, GTUBE + b"\r\n"), TRUSTED
    )
    assert code == 250, reply
    header = head(await delivered(main, subject))
    assert "Received-SPF" not in header and "X-Spam-" not in header
    assert (await antispam_of(main, reply)).skipped == "allowed_ip_group"


async def test_an_authenticated_sender_skips_spf_and_spamd(main: Stack) -> None:
    subject = "from alice"
    code, reply = await asyncio.to_thread(
        send, main.address("smtps"), "a@fail.test", message(subject, GTUBE + b"\r\n"), login=True
    )
    assert code == 250, reply
    assert (await antispam_of(main, reply)).skipped == "authenticated"


async def test_a_pop3_before_smtp_grant_skips_spf_and_spamd(main: Stack) -> None:
    # What the POP3 listener publishes after a login; policy turns it into a grant.
    login = Pop3LoginSucceeded(
        event_id="pop3.antispam.login",
        client_ip=POP3_USER_IP,
        user="alice@example.test",
        listener="pop3",
        session_id="antispam",
    )
    await publish_pop3_login(main.js, login)
    await eventually(lambda: grant_of(main.js, POP3_USER_IP), "the grant to be stored")
    subject = "after a pop3 login"
    code, reply = await asyncio.to_thread(
        send, main.address("smtp"), "a@fail.test", message(subject, GTUBE + b"\r\n"), POP3_USER_IP
    )
    assert code == 250, reply
    assert (await antispam_of(main, reply)).skipped == "pop3_before_smtp"


async def test_antispam_for_allowed_group_checks_the_group(strict: Stack) -> None:
    got, text = await asyncio.to_thread(mail_from, strict.address("smtp"), "a@fail.test", TRUSTED)
    assert got == 550 and text.startswith("5.7.23"), text


# --- spamd failing ---------------------------------------------------------------------------


async def test_a_hung_spamd_tempfails_when_so_configured(strict: Stack) -> None:
    code, reply = await asyncio.to_thread(
        send, strict.address("smtp"), "a@pass.test", message("hung spamd")
    )
    assert (code, reply.split(" ", 1)[0]) == (451, "4.7.1"), reply


async def test_a_stopped_spamd_accepts_marked_unscanned(main: Stack, spamd: Spamd) -> None:
    # Last of the module: spamd stays stopped.
    spamd.stop()
    subject = "spamd stopped"
    code, reply = await asyncio.to_thread(
        send, main.address("smtp"), "a@pass.test", message(subject)
    )
    assert code == 250, reply
    assert "X-Spam-" not in head(await delivered(main, subject))
    spam = (await antispam_of(main, reply)).spam
    assert spam is not None and (spam.result, spam.unscanned) == ("unscanned", "spamd_unavailable")
