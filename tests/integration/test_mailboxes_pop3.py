"""Local mailboxes and the POP3 listener, over real SMTP and POP3 sessions.

Policy, queue, delivery and two ingress replicas run in this process against a
real nats-server; mail for local users goes through the whole pipeline into the
JetStream mailbox store and is read back with `poplib`. The LMTP store is
tested against aiosmtpd's LMTP server.
"""

from __future__ import annotations

import asyncio
import poplib
import smtplib
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import pytest_asyncio
from aiosmtpd.lmtp import LMTP

from libs.common.contract.events import (
    DeliveryAttempted,
    DeliveryDeferred,
    DeliveryJob,
    Destination,
    MessageExpired,
    Recipient,
)
from libs.common.mail.mailbox import MailboxStore
from libs.common.runtime.service import start_service
from services.delivery.adapters.lmtp import LmtpTarget
from services.delivery.adapters.local_store import LocalDelivery, LocalSettings
from services.delivery.core import result_events
from services.ingress.service import IngressService
from tests.support.sink import free_port
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
from tests.support.streams import eventually, history

pytestmark = pytest.mark.asyncio(loop_scope="module")

QUOTA = 6000
GRANT_MINUTES = 30


def config_text(sink_port: int) -> str:
    users = "\n".join(
        f'  - {{address: {name}@example.test, password_hash: "{PASSWORD_HASH}"}}'
        for name in ("alice", "bob", "carol", "dave", "erin", "frank", "henry")
    )
    return f"""
server: {{hostname: mx.example.test, local_domains: [example.test], postmaster: alice@example.test}}
listeners:
  - {{name: smtp, address: "127.0.0.1:0", tls: none}}
  - {{name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: starttls}}
  - {{name: pop3s, protocol: pop3, address: "127.0.0.1:0", tls: implicit}}
  - {{name: pop3-plain, protocol: pop3, address: "127.0.0.1:0", tls: none}}
users:
{users}
mailboxes: {{store: jetstream, quota: {QUOTA}}}
relay:
  mode: restricted
  allowed_ip_group: null
  smtp_auth: true
  pop3_before_smtp: {{enabled: true, minutes: {GRANT_MINUTES}}}
security: {{require_sender_domain_dns: false}}
antispam: {{spf: false}}
policy: {{timeout: 5s}}
queue: {{retry_interval: 1s, warn_after: 2s, bounce_after: 4s}}
delivery:
  mode: relay
  relay_host: {{host: 127.0.0.1, port: {sink_port}}}
  tls: none
"""


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    services = ("policy", "queue", "delivery", "ingress", "ingress")
    tmp = tmp_path_factory.mktemp("mailboxes")
    async with running_stack(tmp, config_text, services) as stack:
        yield stack


# --- clients ---------------------------------------------------------------------------------


def pop3_login(stack: Stack, user: str, source: str = "127.0.0.1", replica: int = 0) -> POP3From:
    client = POP3From(stack.address("pop3", replica), source)
    client.stls(unverified())
    client.user(user)
    client.pass_(PASSWORD)
    return client


def send(stack: Stack, rcpts: list[str], content: bytes, sender: str = "sender@remote.test") -> str:
    with smtplib.SMTP(*stack.address("smtp"), timeout=10) as client:
        client.ehlo("client.test")
        client.mail(sender)
        for rcpt in rcpts:
            assert client.rcpt(rcpt)[0] == 250
        code, reply = client.data(content)
    assert code == 250, reply
    return reply.decode().rsplit(" ", 1)[-1]


async def stored(stack: Stack, address: str, count: int) -> None:
    store = MailboxStore(stack.js)

    async def there() -> bool:
        return len(await store.entries(address)) >= count

    await eventually(there, f"{count} message(s) in {address}'s mailbox")


async def lock_free(stack: Stack, address: str) -> None:
    store = MailboxStore(stack.js)

    async def free() -> bool:
        lock = await store.lock(address, "probe")
        if lock is None:
            return False
        await lock.release()
        return True

    await eventually(free, f"{address}'s mailbox lock to be released", within=5)


# --- mail to a local user, read back ---------------------------------------------------------

MESSAGE = (
    b"From: Sender <sender@remote.test>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: local delivery\r\n"
    b"\r\n"
    b"first line\r\n"
    b".a line that starts with a dot\r\n"
    b"..and two\r\n"
    b"last line\r\n"
)


async def test_mail_to_a_local_user_is_read_back_byte_for_byte(stack: Stack) -> None:
    qid = await asyncio.to_thread(send, stack, ["alice@example.test"], MESSAGE)
    await stored(stack, "alice@example.test", 1)
    (entry,) = await MailboxStore(stack.js).entries("alice@example.test")
    in_store = await MailboxStore(stack.js).read("alice@example.test", entry)

    def read() -> tuple[bytes, bytes, list[bytes], bytes]:
        client = pop3_login(stack, "alice@example.test")
        try:
            stat = client.stat()
            assert stat == (1, len(in_store))
            _, lines, octets = client.retr(1)
            uidl = client.uidl(1)
            _, top_lines, _ = client.top(1, 1)
            return b"\r\n".join(lines) + b"\r\n", uidl, top_lines, str(octets).encode()
        finally:
            client.quit()

    content, uidl, top_lines, _ = await asyncio.to_thread(read)
    assert content == in_store
    head = b"Return-Path: <sender@remote.test>\r\nDelivered-To: alice@example.test\r\nReceived: "
    assert content.startswith(head)
    assert content.endswith(b"\r\n" + MESSAGE)
    assert b"for <alice@example.test>" in content.split(b"\r\nFrom: ")[0]
    assert uidl.decode().split()[-1] == entry.uid and entry.uid.startswith(qid)
    assert top_lines[-2:] == [b"", b"first line"]


async def test_dele_and_quit_remove_a_dropped_session_keeps(stack: Stack) -> None:
    for n in range(2):
        await asyncio.to_thread(send, stack, ["bob@example.test"], b"Subject: %d\r\n\r\nx\r\n" % n)
    await stored(stack, "bob@example.test", 2)

    def drop_after_dele() -> list[bytes]:
        client = pop3_login(stack, "bob@example.test")
        client.dele(1)
        client.dele(2)
        second = POP3From(stack.address("pop3", replica=1))
        second.stls(unverified())
        second.user("bob@example.test")
        try:
            second.pass_(PASSWORD)
            refusal = b"(logged in)"
        except poplib.error_proto as exc:
            refusal = exc.args[0]
        second.quit()
        client.sock.close()  # gone without QUIT: nothing may be deleted
        return [refusal]

    (refusal,) = await asyncio.to_thread(drop_after_dele)
    assert refusal == b"-ERR [IN-USE] Mailbox is in use by another POP3 session"
    await lock_free(stack, "bob@example.test")
    assert len(await MailboxStore(stack.js).entries("bob@example.test")) == 2

    def dele_one_and_quit() -> bytes:
        client = pop3_login(stack, "bob@example.test", replica=1)
        client.dele(1)
        client.rset()
        client.dele(2)
        return client.quit()

    bye = await asyncio.to_thread(dele_one_and_quit)
    assert bye == b"+OK mx.example.test POP3 server signing off (1 messages left)"
    entries = await MailboxStore(stack.js).entries("bob@example.test")
    assert len(entries) == 1

    def left() -> bytes:
        client = pop3_login(stack, "bob@example.test")
        try:
            return b"\r\n".join(client.retr(1)[1])
        finally:
            client.quit()

    assert (await asyncio.to_thread(left)).endswith(b"Subject: 0\r\n\r\nx")


async def test_a_drained_ingress_deletes_nothing(stack: Stack) -> None:
    await MailboxStore(stack.js).append("frank@example.test", "QDRAIN", b"Subject: d\r\n\r\nd\r\n")
    replica = await start_service("ingress", IngressService, stack.config, [stack.url])
    ingress = replica.service
    assert isinstance(ingress, IngressService)

    def open_and_dele() -> POP3From:
        client = POP3From(ingress.addresses["pop3"])
        client.stls(unverified())
        client.user("frank@example.test")
        client.pass_(PASSWORD)
        client.dele(1)
        return client

    client = await asyncio.to_thread(open_and_dele)
    try:
        await replica.close()
        assert await asyncio.to_thread(client.sock.recv, 100) == b""  # closed, no UPDATE
    finally:
        client.sock.close()
    await lock_free(stack, "frank@example.test")
    assert len(await MailboxStore(stack.js).entries("frank@example.test")) == 1


async def test_a_lock_expires_and_its_holder_knows(stack: Stack) -> None:
    store = MailboxStore(stack.js)
    first = await store.lock("gina@example.test", "one", ttl=1)
    assert first is not None and await store.lock("gina@example.test", "two") is None
    assert await first.refresh()

    async def taken() -> bool:
        return await store.lock("gina@example.test", "two") is not None

    await eventually(taken, "the lock to expire", within=5)
    assert not await first.refresh()
    await first.release()  # by sequence: the new holder keeps it
    assert await store.lock("gina@example.test", "three") is None


# --- listeners and logins --------------------------------------------------------------------


async def test_logins_need_tls_and_the_right_password(stack: Stack) -> None:
    source = "127.0.2.1"

    def attempts() -> dict[str, object]:
        out: dict[str, object] = {}
        client = POP3From(stack.address("pop3"), source)
        out["capa"] = client.capa()
        try:
            client.user("alice@example.test")
        except poplib.error_proto as exc:
            out["user in clear"] = exc.args[0]
        client.stls(unverified())
        out["capa tls"] = client.capa()
        client.user("alice@example.test")
        try:
            client.pass_("wrong")
        except poplib.error_proto as exc:
            out["wrong"] = exc.args[0]
        client.quit()
        tls = poplib.POP3_SSL(*stack.address("pop3s"), context=unverified(), timeout=10)
        tls.user("ERIN@example.test")
        out["implicit"] = tls.pass_(PASSWORD)
        tls.quit()
        plain = POP3From(stack.address("pop3-plain"), source)
        out["plain capa"] = plain.capa()
        out["plain user"] = plain.user("alice@example.test")
        plain.quit()
        return out

    out = await asyncio.to_thread(attempts)
    assert "STLS" in out["capa"] and "USER" not in out["capa"]  # type: ignore[operator]
    assert out["user in clear"] == b"-ERR [AUTH] Plaintext authentication disallowed before STLS"
    assert "USER" in out["capa tls"] and "STLS" not in out["capa tls"]  # type: ignore[operator]
    assert out["wrong"] == b"-ERR [AUTH] Authentication credentials invalid"
    assert out["implicit"] == b"+OK Logged in, 0 messages (0 octets)"
    assert "USER" in out["plain capa"]  # type: ignore[operator]
    assert out["plain user"] == b"+OK Send PASS"
    assert await failed_logins(stack.js, source) == 1


async def test_a_tls_none_pop3_listener_logs_users_in(stack: Stack) -> None:
    """The operator chose plain text for this listener (a trusted network): logins work."""
    await asyncio.to_thread(send, stack, ["henry@example.test"], b"Subject: lan\r\n\r\nhi\r\n")
    await stored(stack, "henry@example.test", 1)

    def session() -> tuple[bytes, bytes, tuple[int, int], bytes]:
        client = POP3From(stack.address("pop3-plain"), "127.0.2.4")
        client.user("henry@example.test")
        try:
            client.pass_("wrong")
            wrong = b"(logged in)"
        except poplib.error_proto as exc:
            wrong = exc.args[0]
        client.user("henry@example.test")
        welcome = client.pass_(PASSWORD)
        stat = client.stat()
        body = b"\r\n".join(client.retr(1)[1])
        client.quit()
        return wrong, welcome, stat, body

    wrong, welcome, stat, body = await asyncio.to_thread(session)
    assert wrong == b"-ERR [AUTH] Authentication credentials invalid"
    assert welcome.startswith(b"+OK Logged in, 1 messages")
    assert stat[0] == 1 and body.endswith(b"Subject: lan\r\n\r\nhi")
    assert await failed_logins(stack.js, "127.0.2.4") == 1


# --- POP3-before-SMTP ------------------------------------------------------------------------


def relay_reply(stack: Stack, source: str, replica: int) -> str:
    addr = stack.address("smtp", replica)
    with smtplib.SMTP(*addr, source_address=(source, 0), timeout=10) as client:
        client.ehlo("laptop.test")
        client.mail("carol@example.test")
        code, text = client.rcpt("friend@remote.test")
        client.rset()
    return f"{code} {text.decode()}"


async def test_pop3_login_on_one_replica_lets_relay_through_the_other(stack: Stack) -> None:
    source = "127.0.2.2"
    before = await asyncio.to_thread(relay_reply, stack, source, 1)
    assert before.startswith("554 5.7.1 ")

    def login() -> None:
        pop3_login(stack, "carol@example.test", source, replica=0).quit()

    await asyncio.to_thread(login)
    await eventually(lambda: grant_of(stack.js, source), "the POP3 grant")
    granted = await asyncio.to_thread(relay_reply, stack, source, 1)
    assert granted.startswith("250 2.1.5 ")
    assert (await asyncio.to_thread(relay_reply, stack, "127.0.2.3", 1)).startswith("554 ")
    stack.clock.offset = timedelta(minutes=GRANT_MINUTES, seconds=1)
    try:
        expired = await asyncio.to_thread(relay_reply, stack, source, 1)
    finally:
        stack.clock.offset = timedelta(0)
    assert expired.startswith("554 5.7.1 ")


# --- quota -----------------------------------------------------------------------------------


async def test_over_quota_is_deferred_then_reported(stack: Stack) -> None:
    big = b"Subject: big\r\n\r\n" + b"x" * 70 + b"\r\n"
    fits = big * (QUOTA // len(big) // 2)
    first = await asyncio.to_thread(send, stack, ["dave@example.test"], fits)
    await stored(stack, "dave@example.test", 1)
    qid = await asyncio.to_thread(send, stack, ["dave@example.test"], fits)

    async def expired() -> bool:
        return any(isinstance(e, MessageExpired) for e in await history(stack.js, qid))

    await eventually(expired, "the over-quota message to expire")
    events = await history(stack.js, qid)
    deferrals = [e for e in events if isinstance(e, DeliveryDeferred)]
    assert deferrals and all((d.reply_code, d.status) == (452, "4.2.2") for d in deferrals), (
        deferrals
    )
    (gone,) = [e for e in events if isinstance(e, MessageExpired)]
    assert gone.recipients == ("dave@example.test",)
    assert "452 4.2.2 Mailbox full" in gone.outcomes[0].diagnostic
    # The mailbox stayed full to the end: the report says so, permanently (not 4.4.7).
    assert (gone.outcomes[0].action, gone.outcomes[0].status) == ("failed", "5.2.2")
    entries = await MailboxStore(stack.js).entries("dave@example.test")
    assert [e.queue_id for e in entries] == [first]


# --- the LMTP store --------------------------------------------------------------------------


class LmtpBox:
    """An LMTP server's mailbox store: one user unknown (5xx), one over quota (4xx)."""

    def __init__(self) -> None:
        self.stored: list[tuple[str, bytes]] = []

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        if address.startswith("nobody@"):
            return "550 5.1.1 <nobody@example.test> User unknown"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        replies = []
        for rcpt in envelope.rcpt_tos:
            if rcpt.startswith("full@"):
                replies.append(f"452 4.2.2 <{rcpt}> Mailbox is full")
            else:
                self.stored.append((rcpt, envelope.original_content))
                replies.append(f"250 2.0.0 <{rcpt}> Saved")
        return "\r\n".join(replies)


async def test_lmtp_store_maps_each_recipients_reply(stack: Stack) -> None:
    box = LmtpBox()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: LMTP(box), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        target = LmtpTarget(host="127.0.0.1", port=port, lhlo="mx.example.test")
        delivery = LocalDelivery(stack.js, LocalSettings(store="lmtp", lmtp=target))
        job = DeliveryJob(
            job_id="Q1.a1.d0",
            queue_id="Q1",
            attempt=1,
            destination=Destination(kind="local", domain="example.test"),
            mail_from="sender@remote.test",
            recipients=tuple(
                Recipient(address=f"{u}@example.test") for u in ("alice", "nobody", "full", "bob")
            ),
            size=len(MESSAGE),
        )
        replies = await delivery.deliver(job, MESSAGE)
        events = result_events(
            job, replies, remote_host=delivery.remote_host, tls_version=None, worker="t",
            now=datetime.now(UTC),
        )  # fmt: skip
    finally:
        server.close()
        await server.wait_closed()
    each = [
        r for e in events for r in (e.per_recipient() if isinstance(e, DeliveryAttempted) else (e,))
    ]
    assert [(e.type, e.reply_code, e.status) for e in each] == [
        ("DeliverySucceeded", 250, "2.0.0"),
        ("DeliveryFailed", 550, "5.1.1"),
        ("DeliveryDeferred", 452, "4.2.2"),
        ("DeliverySucceeded", 250, "2.0.0"),
    ]
    assert [r for r, _ in box.stored] == ["alice@example.test", "bob@example.test"]
    assert box.stored[0][1] == MESSAGE  # sent as is, dot-stuffing undone by the server


async def test_lmtp_server_down_defers(stack: Stack) -> None:
    target = LmtpTarget(host="127.0.0.1", port=free_port(), lhlo="mx.example.test")
    delivery = LocalDelivery(stack.js, LocalSettings(store="lmtp", lmtp=target))
    job = DeliveryJob(
        job_id="Q2.a1.d0",
        queue_id="Q2",
        attempt=1,
        destination=Destination(kind="local", domain="example.test"),
        mail_from="",
        recipients=(Recipient(address="alice@example.test"),),
        size=len(MESSAGE),
    )
    (reply,) = await delivery.deliver(job, MESSAGE)
    assert reply.outcome == "deferred" and reply.enhanced_status == "4.4.1"
