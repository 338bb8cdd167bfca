"""Ingress on a real nats-server with real SMTP clients: policy, durability, TLS, drain."""

from __future__ import annotations

import asyncio
import base64
import smtplib
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field

import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.common.config import load_config_text
from libs.common.contract import subjects
from libs.common.contract.events import MessageReceived, parse_event
from libs.common.contract.policy import PolicyDecision, PolicyQuery
from libs.common.mail.bodies import BodyStore
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import Running, start_service
from libs.common.runtime.telemetry import setup_telemetry
from services.ingress.service import IngressService
from services.policy.service import PolicyService
from tests.support.stack import unverified

CONFIG = """
server:
  hostname: mx.example.test
  local_domains: [example.test]
ip_groups:
  local_network: [10.0.0.0/8]
users:
  - {address: bob@example.test}
  - {address: carol@example.test}
  - {address: dave@example.test}
listeners:
  - {name: plain, address: "127.0.0.1:0", tls: none}
  - {name: smtp, address: "127.0.0.1:0", tls: starttls}
  - {name: smtps, address: "127.0.0.1:0", tls: implicit}
  - {name: submission, address: "127.0.0.1:0", tls: starttls, require_auth: true}
  - {name: proxied, address: "127.0.0.1:0", tls: none, proxy_protocol: true}
policy:
  timeout: 2s
security:
  require_sender_domain_dns: false  # the senders here have no DNS; tested in test_security_limits
antispam: {spf: false}  # nor SPF records: tested in test_antispam
"""

MESSAGE = (
    b"From: alice@remote.test\r\n"
    b"To: bob@example.test\r\n"
    b"Subject: hello\r\n"
    b"\r\n"
    b"first line\r\n"
    b".a line that starts with a dot\r\n"
    b"last line\r\n"
)
RECIPIENTS = ["bob@example.test", "carol@example.test", "dave@example.test"]

_spans = InMemorySpanExporter()
setup_telemetry("ingress-tests", processor=SimpleSpanProcessor(_spans))


@dataclass
class Responder:
    """A stand-in for policy: accepts everything but the recipients in `refuse`."""

    refuse: dict[str, PolicyDecision] = field(default_factory=dict)
    stages: tuple[str, ...] = subjects.POLICY_STAGES
    queries: list[tuple[PolicyQuery, dict[str, str]]] = field(default_factory=list)

    async def handle(self, msg: Msg) -> None:
        query = PolicyQuery.model_validate_json(msg.data)
        self.queries.append((query, dict(msg.headers or {})))
        decision = PolicyDecision.accept(rule=f"test_{query.stage}")
        if query.stage == "rcpt" and query.rcpt in self.refuse:
            decision = self.refuse[query.rcpt]
        if query.stage == "auth" and (query.username, query.password) != ("alice", "secret"):
            decision = PolicyDecision(
                action="reject", code=535, status="5.7.8", message="Bad credentials", rule="auth"
            )
        await msg.respond(decision.model_dump_json().encode())

    async def start(self, nc: NATS) -> None:
        for stage in self.stages:
            await nc.subscribe(subjects.policy_subject(stage), cb=self.handle)
        await nc.flush()


async def start_ingress(server: EmbeddedNats, text: str = CONFIG) -> Running:
    return await start_service("ingress", IngressService, load_config_text(text), [server.url])


def address(running: Running, listener: str) -> tuple[str, int]:
    service = running.service
    assert isinstance(service, IngressService)
    return service.addresses[listener]


@pytest.fixture
async def ingress(nats_server: EmbeddedNats, js: JetStreamContext) -> AsyncIterator[Running]:
    running = await start_ingress(nats_server)
    try:
        yield running
    finally:
        await running.close()


def transaction(
    client: smtplib.SMTP, recipients: list[str], sender: str = "alice@remote.test"
) -> list[tuple[int, bytes]]:
    """MAIL, every RCPT, then DATA if any recipient was accepted: every reply in order."""
    client.ehlo("client.remote.test")
    replies = [client.mail(sender)]
    for rcpt in recipients:
        replies.append(client.rcpt(rcpt))
    if any(code == 250 for code, _ in replies[1:]):
        replies.append(client.data(MESSAGE))
    return replies


def session(
    host: str,
    port: int,
    recipients: list[str],
    before: Callable[[smtplib.SMTP], object] | None = None,
) -> list[tuple[int, bytes]]:
    with smtplib.SMTP(host, port, local_hostname="client.remote.test", timeout=10) as client:
        if before is not None:
            before(client)
        replies = transaction(client, recipients)
        client.quit()
    return replies


async def body_of(js: JetStreamContext, qid: str) -> bytes:
    body = await BodyStore(js).get(qid)
    assert body is not None
    return body


async def received_events(js: JetStreamContext) -> list[tuple[MessageReceived, Msg]]:
    info = await js.stream_info(subjects.EVENTS_STREAM)
    sub = await js.subscribe(subjects.events_of_type("MessageReceived"), ordered_consumer=True)
    found: list[tuple[MessageReceived, Msg]] = []
    try:
        for _ in range(info.state.messages):
            msg = await sub.next_msg(timeout=2)
            event = parse_event(msg.data)
            assert isinstance(event, MessageReceived)
            found.append((event, msg))
    finally:
        await sub.unsubscribe()
    return found


async def stored_nothing(js: JetStreamContext) -> None:
    events = await js.stream_info(subjects.EVENTS_STREAM)
    bodies = await js.stream_info(subjects.BODIES_STREAM)
    assert (events.state.messages, bodies.state.messages) == (0, 0)


def queue_id(reply: tuple[int, bytes]) -> str:
    code, text = reply
    prefix = b"2.0.0 Ok: queued as "
    assert code == 250 and text.startswith(prefix), reply
    return text[len(prefix) :].decode()


async def test_three_recipients_are_queued_durably(
    ingress: Running, nc: NATS, js: JetStreamContext
) -> None:
    responder = Responder()
    await responder.start(nc)
    _spans.clear()
    replies = await asyncio.to_thread(session, *address(ingress, "plain"), RECIPIENTS)
    assert replies[:4] == [(250, b"2.1.0 Ok")] + [(250, b"2.1.5 Ok")] * 3
    qid = queue_id(replies[4])

    body = await body_of(js, qid)
    assert body.count(b"Received:") == 1
    received, original = body.split(b"\r\nFrom: ", 1)
    # One Received header, then exactly the message (smtplib dot-stuffed, ingress unstuffed).
    assert b"From: " + original == MESSAGE
    assert received.startswith(b"Received: from client.remote.test (127.0.0.1 [127.0.0.1])\r\n")
    assert f"\tby mx.example.test (mailbus) with ESMTP id {qid};\r\n\t".encode() in received
    assert b"for <" not in received  # several recipients: none named

    [(event, msg)] = await received_events(js)
    assert event.queue_id == qid and event.event_id == f"{qid}.received"
    assert event.mail_from == "alice@remote.test"
    assert [r.address for r in event.recipients] == RECIPIENTS
    assert event.size == len(body)
    assert (event.client.ip, event.client.helo, event.client.listener) == (
        "127.0.0.1",
        "client.remote.test",
        "plain",
    )
    assert event.tls is None and event.auth_user is None
    assert event.policy_rules == ("test_mail", "test_rcpt", "test_data")

    # One trace: the session span, policy's requests and the event all share it.
    assert event.trace_parent is not None
    trace_id = event.trace_parent.split("-")[1]
    assert msg.headers is not None and msg.headers["traceparent"].split("-")[1] == trace_id
    stages = {q.stage: h for q, h in responder.queries}
    assert {"connect", "mail", "rcpt", "data"} <= set(stages)
    assert all(h["traceparent"].split("-")[1] == trace_id for h in stages.values())
    sessions = [s for s in _spans.get_finished_spans() if s.name == "smtp session"]
    assert len(sessions) == 1 and f"{sessions[0].context.trace_id:032x}" == trace_id
    assert sessions[0].attributes is not None
    assert sessions[0].attributes["mailbus.listener"] == "plain"
    rcpt_query = [q for q, _ in responder.queries if q.stage == "rcpt"]
    assert [q.rcpt_count for q in rcpt_query] == [0, 1, 2]
    data_query = next(q for q, _ in responder.queries if q.stage == "data")
    assert data_query.size == len(MESSAGE) and data_query.received_headers == 0


async def test_refusal_at_rcpt_is_relayed_verbatim(
    ingress: Running, nc: NATS, js: JetStreamContext
) -> None:
    denied = PolicyDecision(
        action="reject", code=554, status="5.7.1", message="Relay access denied", rule="relay"
    )
    await Responder(refuse={"eve@remote.test": denied}).start(nc)
    replies = await asyncio.to_thread(
        session, *address(ingress, "plain"), ["eve@remote.test", "bob@example.test"]
    )
    assert replies[1] == (554, b"5.7.1 Relay access denied")
    assert replies[2] == (250, b"2.1.5 Ok")
    qid = queue_id(replies[3])
    [(event, _)] = await received_events(js)
    assert [r.address for r in event.recipients] == ["bob@example.test"]
    assert b"for <bob@example.test>; " in await body_of(js, qid)


async def test_no_policy_means_421_at_connect_and_nothing_stored(
    ingress: Running, js: JetStreamContext
) -> None:
    with pytest.raises(smtplib.SMTPConnectError) as caught:
        await asyncio.to_thread(smtplib.SMTP, *address(ingress, "plain"), timeout=10)
    assert caught.value.smtp_code == 421
    error = caught.value.smtp_error
    assert isinstance(error, bytes) and error.startswith(b"4.3.0 ")
    await stored_nothing(js)


async def test_policy_silent_after_connect_means_451_at_mail(
    ingress: Running, nc: NATS, js: JetStreamContext
) -> None:
    await Responder(stages=("connect",)).start(nc)

    def attempt() -> list[tuple[int, bytes]]:
        with smtplib.SMTP(*address(ingress, "plain"), timeout=10) as client:
            client.ehlo("client.remote.test")
            replies = [client.mail("alice@remote.test"), client.rcpt("bob@example.test")]
            replies.append(client.docmd("DATA"))
            client.quit()
        return replies

    mail, rcpt, data = await asyncio.to_thread(attempt)
    assert mail[0] == 451 and mail[1].startswith(b"4.3.0 ")
    assert rcpt[0] == 503 and rcpt[1].startswith(b"5.5.1 ")  # enhanced code added to aiosmtpd's
    assert data[0] == 503
    await stored_nothing(js)


async def test_starttls_is_esmtps(ingress: Running, nc: NATS, js: JetStreamContext) -> None:
    await Responder().start(nc)

    def starttls(client: smtplib.SMTP) -> None:
        client.ehlo("client.remote.test")
        assert client.has_extn("starttls")
        assert client.starttls(context=unverified())[0] == 220

    replies = await asyncio.to_thread(session, *address(ingress, "smtp"), RECIPIENTS[:1], starttls)
    qid = queue_id(replies[-1])
    body = await body_of(js, qid)
    assert f"with ESMTPS id {qid}\r\n\tfor <bob@example.test>; ".encode() in body
    [(event, _)] = await received_events(js)
    assert event.tls is not None and event.tls.version.startswith("TLSv1.")
    assert event.tls.cipher


async def test_implicit_tls_listener(ingress: Running, nc: NATS, js: JetStreamContext) -> None:
    await Responder().start(nc)
    host, port = address(ingress, "smtps")

    def over_tls() -> tuple[bytes, list[tuple[int, bytes]]]:
        with smtplib.SMTP_SSL(host, port, context=unverified(), timeout=10) as client:
            code, ehlo = client.ehlo("client.remote.test")
            assert code == 250 and not client.has_extn("starttls")
            replies = transaction(client, RECIPIENTS[:2])
            client.quit()
        return ehlo, replies

    ehlo, replies = await asyncio.to_thread(over_tls)
    assert ehlo.startswith(b"mx.example.test")
    qid = queue_id(replies[-1])
    assert f"with ESMTPS id {qid};".encode() in await body_of(js, qid)
    [(event, _)] = await received_events(js)
    assert event.tls is not None and event.client.listener == "smtps"


async def test_greeting_and_replies_shape(ingress: Running, nc: NATS) -> None:
    await Responder().start(nc)

    def talk() -> list[tuple[int, bytes]]:
        client = smtplib.SMTP(timeout=10)
        greeting = client.connect(*address(ingress, "plain"))
        replies = [greeting, client.helo("old.remote.test"), client.docmd("MAIL", "FROM:<>")]
        replies += [client.docmd("BOGUS"), client.noop(), client.rset(), client.quit()]
        return replies

    greeting, helo, mail, bogus, noop, rset, quit_ = await asyncio.to_thread(talk)
    assert greeting == (220, b"mx.example.test ESMTP mailbus")
    assert helo == (250, b"mx.example.test")
    assert mail == (250, b"2.1.0 Ok")  # the null sender
    assert bogus == (502, b"5.5.2 Error: command not recognized")  # as Postfix, not echoed
    assert noop == (250, b"2.0.0 OK") and rset == (250, b"2.0.0 OK")
    assert quit_ == (221, b"2.0.0 Bye")


async def test_real_policy_service_relays_its_refusal(
    nats_server: EmbeddedNats, ingress: Running, js: JetStreamContext
) -> None:
    config = load_config_text(CONFIG)
    policy = await start_service("policy", PolicyService, config, [nats_server.url])
    try:
        replies = await asyncio.to_thread(
            session, *address(ingress, "plain"), ["user@remote.test", "bob@example.test"]
        )
    finally:
        await policy.close()
    assert replies[1] == (554, b"5.7.1 Relay access denied")
    qid = queue_id(replies[3])
    [(event, _)] = await received_events(js)
    assert event.queue_id == qid
    assert "relay_denied" not in event.policy_rules and "local_user" in event.policy_rules


async def test_stop_lets_the_open_transaction_finish(
    nats_server: EmbeddedNats, nc: NATS, js: JetStreamContext
) -> None:
    await Responder().start(nc)
    running = await start_ingress(nats_server)
    host, port = address(running, "plain")
    client = await asyncio.to_thread(smtplib.SMTP, host, port, timeout=10)
    idle = await asyncio.to_thread(smtplib.SMTP, host, port, timeout=10)
    try:
        await asyncio.to_thread(client.ehlo, "client.remote.test")
        assert (await asyncio.to_thread(client.mail, "alice@remote.test"))[0] == 250
        assert (await asyncio.to_thread(client.rcpt, "bob@example.test"))[0] == 250
        stopping = asyncio.create_task(running.close())
        await asyncio.sleep(0.3)
        assert not stopping.done()  # waiting for the open transaction
        qid = queue_id(await asyncio.to_thread(client.data, MESSAGE))
        # The idle session was told at once; the other one right after its transaction.
        assert (await asyncio.to_thread(idle.getreply))[0] == 421
        assert (await asyncio.to_thread(client.getreply))[0] == 421
        await asyncio.wait_for(stopping, timeout=15)
    finally:
        client.close()
        idle.close()
    assert await body_of(js, qid)
    with pytest.raises(ConnectionRefusedError):
        await asyncio.to_thread(smtplib.SMTP, host, port, timeout=5)


async def test_failed_publish_answers_451_and_removes_the_body(
    ingress: Running, nc: NATS, js: JetStreamContext
) -> None:
    await Responder().start(nc)
    await js.delete_stream(subjects.EVENTS_STREAM)  # now no event can be acknowledged
    replies = await asyncio.to_thread(session, *address(ingress, "plain"), RECIPIENTS[:1])
    code, text = replies[-1]
    assert code == 451 and text.startswith(b"4.3.0 ")
    bodies = await js.stream_info(subjects.BODIES_STREAM)
    assert bodies.state.messages == 0


async def test_submission_needs_tls_then_auth(
    ingress: Running, nc: NATS, js: JetStreamContext
) -> None:
    await Responder().start(nc)

    def submit() -> list[tuple[int, bytes]]:
        with smtplib.SMTP(*address(ingress, "submission"), timeout=10) as client:
            client.ehlo("laptop.example.test")
            replies = [client.mail("alice@example.test")]
            client.starttls(context=unverified())
            client.ehlo("laptop.example.test")
            replies.append(client.mail("alice@example.test"))
            plain = base64.b64encode(b"\0alice\0wrong").decode()
            replies.append(client.docmd("AUTH", f"PLAIN {plain}"))
            plain = base64.b64encode(b"\0alice\0secret").decode()
            replies.append(client.docmd("AUTH", f"PLAIN {plain}"))
            replies += transaction(client, ["bob@remote.test"], "alice@example.test")
            client.quit()
        return replies

    replies = await asyncio.to_thread(submit)
    assert replies[0] == (530, b"5.7.0 Must issue a STARTTLS command first")
    assert replies[1] == (530, b"5.7.0 Authentication required")
    assert replies[2] == (535, b"5.7.8 Bad credentials")
    assert replies[3] == (235, b"2.7.0 Authentication successful")
    qid = queue_id(replies[-1])
    assert f"with ESMTPSA id {qid}".encode() in await body_of(js, qid)
    [(event, _)] = await received_events(js)
    assert event.auth_user == "alice" and event.policy_rules[0] == "test_mail"


async def test_auth_framing_replies(ingress: Running, nc: NATS) -> None:
    """SASL framing (RFC 4954) on the wire: challenges, empty and broken responses, an abort."""
    await Responder().start(nc)

    def b64(raw: bytes) -> str:
        return base64.b64encode(raw).decode()

    def exchange() -> list[tuple[int, bytes]]:
        host, port = address(ingress, "smtps")  # implicit TLS: AUTH needs no STARTTLS
        with smtplib.SMTP_SSL(host, port, context=unverified(), timeout=10) as client:
            client.ehlo("laptop.example.test")
            replies = [
                client.docmd("AUTH", "PLAIN not-base64!"),
                client.docmd("AUTH", "PLAIN " + b64(b"alice\0secret")),
                client.docmd("AUTH", "PLAIN ="),
                client.docmd("AUTH", "PLAIN"),
                client.docmd("*"),
                client.docmd("AUTH", "LOGIN"),
                client.docmd(b64(b"alice")),
                client.docmd(b64(b"wrong")),
                client.docmd("AUTH", "LOGIN " + b64(b"alice")),
                client.docmd(b64(b"secret")),
            ]
            client.quit()
        return replies

    assert await asyncio.to_thread(exchange) == [
        (501, b"5.5.2 Can't decode base64"),
        (501, b"5.5.2 Can't split auth value"),
        (501, b"5.5.2 Can't split auth value"),  # "=": an empty initial response
        (334, b""),
        (501, b"5.7.0 Auth aborted"),
        (334, b"VXNlcm5hbWU6"),  # "Username:"
        (334, b"UGFzc3dvcmQ6"),  # "Password:"
        (535, b"5.7.8 Bad credentials"),
        (334, b"UGFzc3dvcmQ6"),
        (235, b"2.7.0 Authentication successful"),
    ]


class ProxiedSMTP(smtplib.SMTP):
    """A client behind a load balancer that speaks the PROXY protocol (v1)."""

    def _get_socket(self, host: str, port: int, timeout: float) -> socket.socket:
        sock: socket.socket = super()._get_socket(host, port, timeout)  # type: ignore[misc]
        sock.sendall(b"PROXY TCP4 192.0.2.55 127.0.0.1 40000 25\r\n")
        return sock


async def test_proxy_protocol_gives_the_real_client(
    ingress: Running, nc: NATS, js: JetStreamContext
) -> None:
    responder = Responder()
    await responder.start(nc)

    def send() -> list[tuple[int, bytes]]:
        with ProxiedSMTP(*address(ingress, "proxied"), timeout=10) as client:
            replies = transaction(client, RECIPIENTS[:1])
            client.quit()
        return replies

    qid = queue_id((await asyncio.to_thread(send))[-1])
    assert b"(192.0.2.55 [192.0.2.55])" in await body_of(js, qid)
    [(event, _)] = await received_events(js)
    assert (event.client.ip, event.client.port) == ("192.0.2.55", 40000)
    assert {q.session.client_ip for q, _ in responder.queries} == {"192.0.2.55"}

    def no_header() -> bytes:
        # Without the header the balancer is misconfigured: nothing is served.
        with socket.create_connection(address(ingress, "proxied"), timeout=10) as sock:
            sock.sendall(b"EHLO client.remote.test\r\n")
            return sock.recv(100)

    assert await asyncio.to_thread(no_header) == b""
