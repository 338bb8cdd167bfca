"""Where delivery goes and how it logs in: MX routing against a real DNS server on
loopback, sinks on several loopback addresses, the relay host with SMTP AUTH or
POP3-before-SMTP, a TLS handshake that fails, and sessions reused for a burst.

The test plays ingress (body, then MessageReceived) and watches the results.
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from libs.common.config import Config, load_config_text
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import Running
from tests.support import pop3, queue
from tests.support.dns import DnsServer
from tests.support.pop3 import USER, Pop3Server
from tests.support.queue import BODY, equals, receive, start_delivery, start_queue
from tests.support.sink import Sink, free_port, self_signed
from tests.support.streams import (
    completed,
    eventually,
    history,
    jobs_waiting,
    results_by_recipient,
    results_count,
)

SinkFactory = Callable[..., tuple[Sink, int]]
services = queue.services  # shared fixtures
pop3_server = pop3.pop3_server


@pytest.fixture
def dns() -> Iterator[DnsServer]:
    with DnsServer() as server:
        yield server


def mx_config(dns: DnsServer, port: int) -> Config:
    host, dns_port = dns.address
    return load_config_text(
        f"""
server: {{hostname: mx.example.test, local_domains: [example.test]}}
dns: {{servers: ["{host}:{dns_port}"], timeout: 1s}}
delivery: {{mode: mx, mx_port: {port}, tls: none, connect_timeout: 2s}}
"""
    )


def relay_config(port: int, auth: str = "", tls: str = "none") -> Config:
    return load_config_text(
        f"""
server: {{hostname: mx.example.test, local_domains: [example.test]}}
delivery:
  mode: relay
  relay_host:
    host: 127.0.0.1
    port: {port}
{auth}
  tls: {tls}
  connect_timeout: 2s
"""
    )


def shared_port(*hosts: str) -> int:
    """One port free on every one of these loopback addresses (mx_port is global)."""
    for _ in range(50):
        port = free_port(hosts[0])
        try:
            for host in hosts[1:]:
                with socket.socket() as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise OSError("no common free port")


async def run(nats_server: EmbeddedNats, config: Config, services: list[Running]) -> None:
    services.append(await start_queue(config, nats_server))
    services.append(await start_delivery(config, nats_server))


# --- MX ---------------------------------------------------------------------------------------


async def test_mx_routing_over_real_dns(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: SinkFactory,
    services: list[Running],
    dns: DnsServer,
) -> None:
    port = shared_port("127.0.0.2", "127.0.0.3", "127.0.0.4", "127.0.0.5", "127.0.0.6")
    equal_a, _ = sink_factory(host="127.0.0.3", port=port)
    equal_b, _ = sink_factory(host="127.0.0.4", port=port)
    backup, _ = sink_factory(host="127.0.0.5", port=port)
    a_record, _ = sink_factory(host="127.0.0.6", port=port)
    # remote.test: the best MX is dead (nothing on 127.0.0.2, nor on its ::1), two equal
    # second-best ones are up, and a backup behind them must not be needed
    dns.add("remote.test", "MX", "10 mx1.remote.test.")
    dns.add("remote.test", "MX", "20 mx2a.remote.test.")
    dns.add("remote.test", "MX", "20 mx2b.remote.test.")
    dns.add("remote.test", "MX", "30 backup.remote.test.")
    dns.add("mx1.remote.test", "A", "127.0.0.2")
    dns.add("mx1.remote.test", "AAAA", "::1")
    dns.add("mx2a.remote.test", "A", "127.0.0.3")
    dns.add("mx2b.remote.test", "A", "127.0.0.4")
    dns.add("backup.remote.test", "A", "127.0.0.5")
    # deadmx.test: its MX is dead; its own A record is up but must never be used
    dns.add("deadmx.test", "MX", "10 mx.deadmx.test.")
    dns.add("mx.deadmx.test", "A", "127.0.0.2")
    dns.add("deadmx.test", "A", "127.0.0.6")
    # implicit.test: no MX at all, so its A record is the mail host
    dns.add("implicit.test", "A", "127.0.0.6")
    dns.add("nomail.test", "MX", "0 .")
    dns.servfail("broken.test")
    dns.timeout("slow.test")
    await run(nats_server, mx_config(dns, port), services)
    rcpts = {
        "best@remote.test": ("DeliverySucceeded", "2.0.0"),
        "a@deadmx.test": ("DeliveryDeferred", "4.4.1"),
        "b@implicit.test": ("DeliverySucceeded", "2.0.0"),
        "c@nomail.test": ("DeliveryFailed", "5.1.10"),
        "d@nowhere.test": ("DeliveryFailed", "5.1.2"),
        "e@broken.test": ("DeliveryDeferred", "4.4.3"),
        "f@slow.test": ("DeliveryDeferred", "4.4.3"),
    }
    await receive(js, "QMX", list(rcpts))

    await eventually(lambda: equals(results_count(js, "QMX"), len(rcpts)), "every result")
    results = await results_by_recipient(js, "QMX")
    assert {a: (r.type, r.status) for a, r in results.items()} == rcpts
    best = results["best@remote.test"]
    assert best.remote_host in ("mx2a.remote.test[127.0.0.3]", "mx2b.remote.test[127.0.0.4]")
    assert [r for _, r, _ in equal_a.received + equal_b.received] == [["best@remote.test"]]
    assert backup.received == []
    # the implicit MX got its mail; deadmx.test's A record got nothing
    assert a_record.received == [("alice@example.test", ["b@implicit.test"], BODY)]
    assert results["a@deadmx.test"].remote_host == "mx.deadmx.test[127.0.0.2]"
    assert "null MX" in results["c@nomail.test"].reply_text
    assert "timed out" in results["f@slow.test"].reply_text
    # both addresses of the dead best MX were tried before the next host
    asked = [(q.name, q.qtype) for q in dns.queries]
    assert ("mx1.remote.test", "AAAA") in asked
    assert ("deadmx.test", "A") not in asked


# --- relay host: SMTP AUTH, POP3-before-SMTP --------------------------------------------------


@pytest.mark.parametrize(("password", "outcome"), [("s3cret", "ok"), ("wrong", "deferred")])
async def test_relay_with_smtp_auth(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: SinkFactory,
    services: list[Running],
    password: str,
    outcome: str,
) -> None:
    sink, port = sink_factory(users={"mailbus": "s3cret"})
    auth = f"""    auth:
      enabled: true
      method: smtp_auth
      username: mailbus
      password: {password}
      allow_plaintext: true  # the sink offers no TLS"""
    await run(nats_server, relay_config(port, auth), services)
    await receive(js, "QAUTH", ["someone@remote.test"])

    await eventually(lambda: equals(results_count(js, "QAUTH"), 1), "the result")
    (result,) = (await results_by_recipient(js, "QAUTH")).values()
    if outcome == "ok":
        assert result.type == "DeliverySucceeded"
        assert sink.auth_logins == ["mailbus"] and len(sink.received) == 1
    else:
        # the operator's mistake keeps the mail, with a diagnostic that says why
        assert (result.type, result.status) == ("DeliveryDeferred", "4.7.0")
        assert "AUTH" in result.reply_text and "535" in result.reply_text
        assert sink.received == []


@pytest.mark.parametrize(
    ("password", "stls", "outcome"),
    [("s3cret", True, "ok"), ("s3cret", False, "ok"), ("wrong", False, "deferred")],
)
async def test_relay_with_pop3_before_smtp(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: SinkFactory,
    services: list[Running],
    pop3_server: Pop3Server,
    tmp_path: Path,
    password: str,
    stls: bool,
    outcome: str,
) -> None:
    if stls:
        pop3_server.tls = self_signed(tmp_path)
    # the relay refuses to relay for any address that has not logged in to POP3 first
    sink, port = sink_factory(relay_gate=pop3_server)
    auth = f"""    auth:
      enabled: true
      method: pop3_before_smtp
      username: {USER}
      password: {password}
      pop3_port: {pop3_server.port}
      allow_plaintext: {str(not stls).lower()}"""
    await run(nats_server, relay_config(port, auth, tls="opportunistic"), services)
    await receive(js, "QPOP", ["someone@remote.test"])

    await eventually(lambda: equals(results_count(js, "QPOP"), 1), "the result")
    (result,) = (await results_by_recipient(js, "QPOP")).values()
    if outcome == "ok":
        assert result.type == "DeliverySucceeded"
        assert pop3_server.logins == ["127.0.0.1"] and pop3_server.tls_used == [stls]
        assert [r for _, r, _ in sink.received] == [["someone@remote.test"]]
    else:
        assert (result.type, result.status) == ("DeliveryDeferred", "4.7.0")
        assert "POP3 PASS" in result.reply_text and "-ERR" in result.reply_text
        assert pop3_server.failures == ["127.0.0.1"] and sink.received == []


async def test_pop3_login_is_renewed_within_the_relay_hosts_grant(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: SinkFactory,
    services: list[Running],
    pop3_server: Pop3Server,
) -> None:
    # The relay host lets an address relay for 1.5 s after a POP3 login: a login
    # reused for longer (the old fixed 60 s) would get 554 and bounce the second message.
    pop3_server.grant_s = 1.5
    sink, port = sink_factory(relay_gate=pop3_server)
    assert sink.received == []
    auth = f"""    auth:
      enabled: true
      method: pop3_before_smtp
      username: {USER}
      password: s3cret
      pop3_port: {pop3_server.port}
      pop3_grant: 1500ms
      allow_plaintext: true"""
    await run(nats_server, relay_config(port, auth), services)
    await receive(js, "QGRANT1", ["first@remote.test"])
    await eventually(lambda: equals(results_count(js, "QGRANT1"), 1), "the first result")
    await asyncio.sleep(2.0)  # past the relay host's grant
    await receive(js, "QGRANT2", ["second@remote.test"])
    await eventually(lambda: equals(results_count(js, "QGRANT2"), 1), "the second result")
    for qid in ("QGRANT1", "QGRANT2"):
        (result,) = (await results_by_recipient(js, qid)).values()
        assert result.type == "DeliverySucceeded", result
    assert len(pop3_server.logins) == 2
    assert [r for _, r, _ in sink.received] == [["first@remote.test"], ["second@remote.test"]]


async def test_relay_refuses_without_the_pop3_login(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: SinkFactory,
    services: list[Running],
    pop3_server: Pop3Server,
) -> None:
    _, port = sink_factory(relay_gate=pop3_server)
    await run(nats_server, relay_config(port), services)  # auth not configured
    await receive(js, "QNOPOP", ["someone@remote.test"])
    await eventually(lambda: equals(results_count(js, "QNOPOP"), 1), "the result")
    (result,) = (await results_by_recipient(js, "QNOPOP")).values()
    assert (result.type, result.reply_code) == ("DeliveryFailed", 554)


# --- TLS and sessions --------------------------------------------------------------------------


async def test_opportunistic_tls_retries_in_plain_text_when_the_handshake_fails(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: SinkFactory,
    services: list[Running],
    tmp_path: Path,
) -> None:
    sink, port = sink_factory(tls=self_signed(tmp_path), broken_tls=True)
    await run(nats_server, relay_config(port, tls="opportunistic"), services)
    await receive(js, "QBADTLS", ["someone@remote.test"])

    await eventually(lambda: equals(results_count(js, "QBADTLS"), 1), "the result")
    (result,) = (await results_by_recipient(js, "QBADTLS")).values()
    assert result.type == "DeliverySucceeded" and result.tls_version is None
    assert sink.sessions == 2 and sink.tls_seen == [False]  # the failed one, then plain


async def test_a_burst_to_one_destination_shares_sessions(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: SinkFactory,
    services: list[Running],
) -> None:
    sink, port = sink_factory()
    config = relay_config(port)
    services.append(await start_queue(config, nats_server))
    qids = [f"QBURST{i}" for i in range(8)]
    for qid in qids:
        await receive(js, qid, [f"{qid.lower()}@remote.test"])
    await eventually(lambda: equals(jobs_waiting(js), len(qids)), "eight jobs waiting")
    services.append(await start_delivery(config, nats_server))  # they are due together

    async def all_completed() -> bool:
        return all([await completed(js, q) for q in qids])

    await eventually(all_completed, "eight completed messages")
    assert len(sink.received) == 8 and sink.mail_from_seen == 8
    assert sink.sessions < 8  # several MAIL transactions per session
    for qid in qids:
        assert [e.type for e in await history(js, qid)].count("DeliverySucceeded") == 1
