"""The relay password and TLS on the way out, against real aiosmtpd sinks on loopback.

- the password only goes over TLS unless relay_host.auth.allow_plaintext: a
  relay host without STARTTLS gets no AUTH at all, and the mail waits (4.7.10)
  with a reason that names the key;
- one AUTH per attempt, with the strongest mechanism offered: a wrong
  password costs the relay host's lockout counter one failure, not one per
  mechanism;
- delivery.tls verify checks the chain against delivery.tls_ca_file and the
  relay host's name: a certificate from another CA, or for another name,
  defers the mail (4.7.5); the right one delivers it.
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from libs.common.config import load_config_text
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import Running
from tests.integration.test_delivery_routes import relay_config, run
from tests.support import queue
from tests.support.certs import Authority, Issued
from tests.support.queue import equals, receive
from tests.support.sink import Sink, self_signed
from tests.support.streams import eventually, results_by_recipient, results_count

SinkFactory = Callable[..., tuple[Sink, int]]
services = queue.services  # shared fixtures


def auth_block(password: str = "s3cret", allow_plaintext: bool = False) -> str:
    return f"""    auth:
      enabled: true
      method: smtp_auth
      username: mailbus
      password: {password}
      allow_plaintext: {str(allow_plaintext).lower()}"""


async def one_result(js: JetStreamContext, qid: str) -> tuple[str, str, str]:
    await receive(js, qid, ["someone@remote.test"])
    await eventually(lambda: equals(results_count(js, qid), 1), "the result")
    (result,) = (await results_by_recipient(js, qid)).values()
    return result.type, result.status, result.reply_text


@pytest.mark.parametrize(("allow", "expected"), [(False, "DeliveryDeferred"), (True, "ok")])
async def test_no_password_in_clear_unless_allowed(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: SinkFactory,
    services: list[Running],
    allow: bool,
    expected: str,
) -> None:
    sink, port = sink_factory(users={"mailbus": "s3cret"})  # no STARTTLS offered
    await run(nats_server, relay_config(port, auth_block(allow_plaintext=allow)), services)
    kind, status, text = await one_result(js, f"QPLAIN{int(allow)}")
    if expected == "ok":
        assert kind == "DeliverySucceeded" and sink.auth_logins == ["mailbus"]
        return
    assert (kind, status) == ("DeliveryDeferred", "4.7.10")
    assert "allow_plaintext" in text
    assert sink.auth_attempts == [] and sink.received == []


async def test_the_password_goes_over_tls(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: SinkFactory,
    services: list[Running],
    tmp_path: Path,
) -> None:
    sink, port = sink_factory(users={"mailbus": "s3cret"}, tls=self_signed(tmp_path))
    await run(nats_server, relay_config(port, auth_block(), tls="opportunistic"), services)
    kind, _, _ = await one_result(js, "QTLSAUTH")
    assert kind == "DeliverySucceeded"
    assert sink.auth_logins == ["mailbus"] and sink.tls_seen == [True]


async def test_a_wrong_password_is_one_failed_login(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: SinkFactory,
    services: list[Running],
    tmp_path: Path,
) -> None:
    sink, port = sink_factory(users={"mailbus": "s3cret"}, tls=self_signed(tmp_path))
    config = relay_config(port, auth_block(password="wrong"), tls="required")
    await run(nats_server, config, services)
    kind, status, text = await one_result(js, "QONEAUTH")
    assert (kind, status) == ("DeliveryDeferred", "4.7.0")
    assert "AUTH PLAIN" in text and "535" in text
    # aiosmtpd offers PLAIN and LOGIN: PLAIN alone was tried, once.
    assert sink.auth_attempts == ["PLAIN"]


# --- delivery.tls: verify ---------------------------------------------------------------------


def server_context(issued: Issued) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(issued.cert_file, issued.key_file)
    return context


def verify_config(port: int, ca_file: Path) -> str:
    return f"""
server: {{hostname: mx.example.test, local_domains: [example.test]}}
delivery:
  mode: relay
  relay_host: {{host: localhost, port: {port}}}
  tls: verify
  tls_ca_file: {ca_file}
  connect_timeout: 2s
"""


@pytest.mark.parametrize(
    ("signed_by", "name", "expected"),
    [
        ("ours", "localhost", "DeliverySucceeded"),
        ("ours", "evil-mitm.invalid", "DeliveryDeferred"),  # our CA, another host's name
        ("theirs", "localhost", "DeliveryDeferred"),  # the right name from a CA we do not trust
    ],
)
async def test_tls_verify_checks_chain_and_name(
    nats_server: EmbeddedNats,
    js: JetStreamContext,
    sink_factory: SinkFactory,
    services: list[Running],
    tmp_path: Path,
    signed_by: str,
    name: str,
    expected: str,
) -> None:
    ours = Authority.create(tmp_path, "ours")
    signer = ours if signed_by == "ours" else Authority.create(tmp_path, signed_by)
    sink, port = sink_factory(tls=server_context(signer.issue(tmp_path, name)))
    await run(nats_server, load_config_text(verify_config(port, ours.file)), services)
    kind, status, text = await one_result(js, f"QVERIFY{signed_by}{name[:4]}")
    assert kind == expected, text
    if expected == "DeliveryDeferred":
        assert status == "4.7.5" and "certificate" in text.lower()
        assert sink.received == []
    else:
        assert sink.tls_seen == [True]
