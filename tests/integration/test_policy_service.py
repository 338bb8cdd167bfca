"""The policy service on a real nats-server: relay control, replicas, tracing, fail-closed."""

from __future__ import annotations

import asyncio
import json
import logging
import time

import pytest
from argon2 import PasswordHasher
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from libs.common.config import Config, load_config_text
from libs.common.contract import subjects
from libs.common.contract.events import Pop3LoginSucceeded
from libs.common.contract.policy import PolicyDecision, PolicyQuery, Session
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.policy_client import PolicyClient, publish_pop3_login
from libs.common.runtime.service import Running, start_service
from libs.common.runtime.telemetry import setup_telemetry, tracer
from services.policy.service import PolicyService
from tests.support.streams import eventually

CONFIG = """
server:
  hostname: mx.example.test
  local_domains: [example.test]
ip_groups:
  local_network: [10.0.0.0/8, "::1"]
relay:
  mode: restricted
  allowed_ip_group: local_network
users:
  - address: user@example.test
"""

OUTSIDE = "192.0.2.99"
INSIDE = "10.20.30.40"


def rcpt_query(rcpt: str, ip: str, session_id: str = "s1") -> PolicyQuery:
    return PolicyQuery(
        stage="rcpt", session=Session(session_id=session_id, client_ip=ip), rcpt=rcpt
    )


async def start_policy(server: EmbeddedNats, config_text: str = CONFIG) -> Running:
    config: Config = load_config_text(config_text)
    return await start_service("policy", PolicyService, config, [server.url])


async def test_relay_control(
    nats_server: EmbeddedNats, nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    running = await start_policy(nats_server)
    client = PolicyClient(nc, timeout=5.0)
    try:
        caplog.set_level(logging.INFO, logger="services.policy")
        caplog.set_level(logging.INFO, logger="mailbus.maillog")
        local = await client.ask(rcpt_query("User@Example.TEST.", OUTSIDE))
        assert (local.action, local.rule, local.code) == ("accept", "local_user", 250)
        assert local.canonical == "user@example.test"

        denied = await client.ask(rcpt_query("user@remote.test", OUTSIDE, "s-denied"))
        assert (denied.action, denied.rule) == ("reject", "relay_denied")
        assert denied.smtp_reply == "554 5.7.1 Relay access denied"

        allowed = await client.ask(rcpt_query("user@remote.test", INSIDE))
        assert (allowed.action, allowed.rule) == ("accept", "allowed_ip_group")

        trick = await client.ask(rcpt_query("user%remote.test@example.test", OUTSIDE))
        assert (trick.code, trick.status, trick.rule) == (553, "5.1.3", "percent_hack")

        for stage, rule in (("connect", "connect_ok"), ("helo", "helo_ok"), ("data", "data_ok")):
            query = PolicyQuery(stage=stage, session=Session(session_id="s1", client_ip=OUTSIDE))
            assert (await client.ask(query)).rule == rule
        sender = await client.ask(
            PolicyQuery(
                stage="mail", session=Session(session_id="s1", client_ip=OUTSIDE), mail_from="<>"
            )
        )
        assert (sender.action, sender.rule) == ("accept", "mail_ok")
    finally:
        await running.close()
    # One mail-log line per refusal, in Postfix's shape, naming the rule.
    refusals = [r.getMessage() for r in caplog.records if "NOQUEUE: reject:" in r.getMessage()]
    assert any("RCPT from" in m and "rule=relay_denied" in m for m in refusals), refusals
    assert any("rule=percent_hack" in m for m in refusals)


async def test_open_relay_warns_at_start(
    nats_server: EmbeddedNats, nc: NATS, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="services.policy")
    running = await start_policy(nats_server, "relay:\n  mode: open\n")
    try:
        decision = await PolicyClient(nc).ask(rcpt_query("user@remote.test", OUTSIDE))
        assert decision.rule == "relay_open"
    finally:
        await running.close()
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("open relay: anyone may send anywhere" in r.getMessage() for r in warnings)


async def _stats(nc: NATS, expected: int, wait: float = 3.0) -> list[dict[str, object]]:
    """Every replica's $SRV.STATS answer (each replica replies once to the same request)."""
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    await nc.publish(f"$SRV.STATS.{subjects.POLICY_SERVICE}", b"", reply=inbox)
    replies: list[dict[str, object]] = []
    deadline = time.monotonic() + wait
    try:
        while len(replies) < expected and time.monotonic() < deadline:
            try:
                msg = await sub.next_msg(timeout=max(0.01, deadline - time.monotonic()))
            except TimeoutError:
                break
            replies.append(json.loads(msg.data))
    finally:
        await sub.unsubscribe()
    return replies


def _rcpt_requests(stats: dict[str, object]) -> int:
    endpoints = stats["endpoints"]
    assert isinstance(endpoints, list)
    return sum(int(e["num_requests"]) for e in endpoints if e["name"] == "rcpt")


async def test_two_replicas_share_the_load(nats_server: EmbeddedNats, nc: NATS) -> None:
    replicas = [await start_policy(nats_server), await start_policy(nats_server)]
    client = PolicyClient(nc, timeout=5.0)
    try:
        asks = 40
        decisions = await asyncio.gather(
            *(client.ask(rcpt_query("user@example.test", OUTSIDE, f"s{i}")) for i in range(asks))
        )
        assert all(d.rule == "local_user" for d in decisions)
        stats = await _stats(nc, expected=2)
        assert len(stats) == 2
        counts = [_rcpt_requests(s) for s in stats]
        assert sum(counts) == asks
        assert all(c > 0 for c in counts), counts
    finally:
        for running in replicas:
            await running.close()


async def test_trace_continues_from_the_session(nats_server: EmbeddedNats, nc: NATS) -> None:
    exporter = InMemorySpanExporter()
    setup_telemetry("policy-test", processor=SimpleSpanProcessor(exporter))
    running = await start_policy(nats_server)
    try:
        with tracer("test").start_as_current_span("smtp session") as session_span:
            await PolicyClient(nc).ask(rcpt_query("user@remote.test", OUTSIDE))
        trace_id = session_span.get_span_context().trace_id
    finally:
        await running.close()
    spans = [s for s in exporter.get_finished_spans() if s.name == "policy rcpt"]
    assert spans, [s.name for s in exporter.get_finished_spans()]
    span = spans[-1]
    assert span.context is not None and span.context.trace_id == trace_id
    assert span.parent is not None
    assert span.parent.span_id == session_span.get_span_context().span_id
    assert span.attributes is not None
    assert span.attributes["mailbus.policy.rule"] == "relay_denied"
    assert span.attributes["mailbus.policy.code"] == 554


async def test_malformed_request_gets_a_service_error(nats_server: EmbeddedNats, nc: NATS) -> None:
    running = await start_policy(nats_server)
    try:
        for payload in (
            b"not json",
            b'{"stage": "rcpt"}',
            rcpt_query("a@b.test", OUTSIDE)
            .model_copy(update={"stage": "mail"})
            .model_dump_json()
            .encode(),
        ):
            reply = await nc.request(subjects.policy_subject("rcpt"), payload, timeout=5)
            assert reply.headers is not None
            assert reply.headers.get("Nats-Service-Error-Code") == "400"
            assert reply.headers.get("Nats-Service-Error")
    finally:
        await running.close()


async def test_fails_closed_when_policy_is_down(nats_server: EmbeddedNats, nc: NATS) -> None:
    running = await start_policy(nats_server)
    client = PolicyClient(nc, timeout=1.0)
    first = await client.ask(rcpt_query("user@example.test", OUTSIDE))
    assert first.accepted
    await running.close()
    decision = await asyncio.wait_for(
        client.ask(rcpt_query("user@example.test", OUTSIDE)), timeout=3.0
    )
    assert decision == PolicyDecision(
        action="defer",
        code=451,
        status="4.3.0",
        message="Policy service unavailable, try again later",
        rule="policy_unavailable",
    )

    # A policy that is there but hangs: the answer still comes, as 451, once the timeout passes.
    hung = await nc.subscribe(subjects.policy_subject("rcpt"), cb=_never_answer)
    try:
        late = await asyncio.wait_for(
            client.ask(rcpt_query("user@example.test", OUTSIDE)), timeout=3.0
        )
    finally:
        await hung.unsubscribe()
    assert late == decision


async def _never_answer(msg: object) -> None:
    return None


GRANTS_CONFIG = """
server: {hostname: mx.example.test, local_domains: [example.test]}
relay:
  mode: restricted
  pop3_before_smtp: {enabled: true, minutes: 30}
"""


async def _rule_for(client: PolicyClient, ip: str) -> str:
    return (await client.ask(rcpt_query("user@remote.test", ip))).rule


async def test_pop3_grants_are_shared_and_outlive_the_replica(
    nats_server: EmbeddedNats, nc: NATS, js: JetStreamContext
) -> None:
    client = PolicyClient(nc, timeout=5.0)
    first = await start_policy(nats_server, GRANTS_CONFIG)
    try:
        assert await _rule_for(client, "192.0.2.50") == "relay_denied"
        login = Pop3LoginSucceeded(event_id="l1", client_ip="192.0.2.50", user="u@example.test")
        await publish_pop3_login(js, login)

        async def granted() -> bool:
            return await _rule_for(client, "192.0.2.50") == "pop3_before_smtp"

        await eventually(granted, "the grant of 192.0.2.50")
    finally:
        await first.close()

    # A login while no policy runs waits in the stream for the durable consumer.
    later = Pop3LoginSucceeded(event_id="l2", client_ip="::ffff:192.0.2.51", user="u@example.test")
    await publish_pop3_login(js, later)
    second = await start_policy(nats_server, GRANTS_CONFIG)
    try:
        # A fresh replica reads the grant the first one stored.
        assert await _rule_for(client, "192.0.2.50") == "pop3_before_smtp"

        async def granted_too() -> bool:
            return await _rule_for(client, "192.0.2.51") == "pop3_before_smtp"

        await eventually(granted_too, "the grant of 192.0.2.51")
        assert await _rule_for(client, "192.0.2.52") == "relay_denied"
    finally:
        await second.close()


async def test_password_checks_do_not_hold_up_other_answers(
    nats_server: EmbeddedNats, nc: NATS
) -> None:
    # Full-cost hashes (64 MiB, t=3): each check takes a while on purpose.
    encoded = PasswordHasher().hash("pw")
    config = (
        GRANTS_CONFIG + f"users: [{{address: user@example.test, password_hash: '{encoded}'}}]\n"
    )
    running = await start_policy(nats_server, config)
    client = PolicyClient(nc, timeout=10.0)
    session = Session(session_id="s", client_ip=OUTSIDE, tls=True)
    try:
        logins = [
            asyncio.create_task(
                client.ask(
                    PolicyQuery(
                        stage="auth",
                        session=session,
                        mechanism="PLAIN",
                        username="user@example.test",
                        password="pw" if i % 2 else "wrong",
                    )
                )
            )
            for i in range(4)
        ]
        await asyncio.sleep(0.01)  # the logins are on their way first
        rcpt = await client.ask(rcpt_query("user@remote.test", OUTSIDE))
        assert rcpt.rule == "relay_denied"
        assert not all(task.done() for task in logins)  # answered while checks still ran
        decisions = await asyncio.gather(*logins)
        assert [d.rule for d in decisions] == ["auth_failed", "auth_ok"] * 2
        assert decisions[1].canonical == "user@example.test"
    finally:
        await running.close()
