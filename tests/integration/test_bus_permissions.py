"""Least privilege on the bus: every service runs as its own NATS user with the
permissions of libs/common/contract/permissions.py, the whole mail path works (relay,
failure report, local mailbox, POP3, operator commands), the server logs no
permission violation while it does, and forbidden publishes and subscriptions
are refused."""

from __future__ import annotations

import asyncio
import poplib
import secrets
import smtplib
import ssl
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import nats
import nats.errors
import pytest
from argon2 import PasswordHasher, Type
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext

from libs.common.config import load_config_text
from libs.common.contract import permissions, subjects
from libs.common.contract.events import EVENT_TYPES, DeliverySucceeded
from libs.common.runtime import bus, topology
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import Running
from tests.support.pipeline import pipeline, smtp_address
from tests.support.sink import Sink
from tests.support.streams import eventually, history, types

PASSWORD = "pop3-password"
HASH = PasswordHasher(time_cost=1, memory_cost=8, parallelism=1, type=Type.ID).hash(PASSWORD)


@dataclass
class Secured:
    server: EmbeddedNats
    passwords: dict[str, str]
    admin: str
    sink: Sink
    running: dict[str, Running]

    def url(self, user: str, password: str) -> str:
        return f"nats://{user}:{password}@127.0.0.1:{self.server.port}"

    def service_url(self, service: str) -> str:
        return self.url(subjects.service_name(service), self.passwords[service])

    def address(self, listener: str) -> tuple[str, int]:
        return smtp_address(self.running, listener)

    def violations(self) -> list[str]:
        assert self.server.log_file is not None
        log = self.server.log_file.read_text(errors="replace")
        return [line for line in log.splitlines() if " Violation - " in line]


@pytest.fixture
async def secured(
    tmp_path: Path, sink_factory: Callable[..., tuple[Sink, int]]
) -> AsyncIterator[Secured]:
    passwords = {svc: secrets.token_urlsafe(16) for svc in subjects.SERVICES}
    admin = secrets.token_urlsafe(16)
    server = EmbeddedNats(
        data_dir=tmp_path / "nats",
        log_file=tmp_path / "nats.log",
        extra_config=permissions.authorization_block(passwords, admin),
    )
    server.start()
    sink, sink_port = sink_factory(replies={"nobody@remote.test": "550 5.1.1 No such user"})
    config = load_config_text(
        f"""
server: {{hostname: mx.example.test, local_domains: [example.test]}}
listeners:
  - {{name: smtp, protocol: smtp, address: "127.0.0.1:0", tls: none}}
  - {{name: pop3, protocol: pop3, address: "127.0.0.1:0", tls: starttls}}
users: [{{address: alice@example.test, password_hash: "{HASH}"}}]
ip_groups: {{inside: [127.0.0.1]}}
relay: {{mode: restricted, allowed_ip_group: inside}}
security: {{require_sender_domain_dns: false, max_failed_commands: 0}}
antispam: {{spf: false}}
delivery: {{mode: relay, relay_host: {{host: 127.0.0.1, port: {sink_port}}}, tls: none}}
"""
    )
    state = Secured(server, passwords, admin, sink, {})
    try:
        # The topology's one owner, as the admin user: the services may only verify it.
        nc = await nats.connect(state.url(permissions.ADMIN_USER, admin))
        try:
            await topology.migrate(nc.jetstream(), 1)
        finally:
            await nc.close()
        async with pipeline(config, lambda name: [state.service_url(name)]) as running:
            state.running = running
            yield state
    finally:
        server.stop()


def _send(addr: tuple[str, int], sender: str, rcpts: list[str]) -> None:
    with smtplib.SMTP(*addr, timeout=10) as client:
        client.sendmail(sender, rcpts, b"Subject: secured\r\n\r\nhello\r\n")


def _pop3_count(addr: tuple[str, int]) -> int:
    ctx = ssl.create_default_context()
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    client = poplib.POP3(*addr, timeout=10)
    try:
        client.stls(ctx)
        client.user("alice@example.test")
        client.pass_(PASSWORD)
        count, _ = client.stat()
        return count
    finally:
        client.quit()


async def _admin(state: Secured) -> tuple[NATS, JetStreamContext]:
    nc = await nats.connect(state.url(permissions.ADMIN_USER, state.admin))
    return nc, nc.jetstream()


async def test_every_service_works_under_its_own_permissions(secured: Secured) -> None:
    # Relay with one refused recipient: delivered, failed, and a report to the sender.
    await asyncio.to_thread(
        _send,
        secured.address("smtp"),
        "sender@remote.test",
        ["ok@remote.test", "nobody@remote.test"],
    )
    # A local recipient: into the mailbox, read back over POP3.
    await asyncio.to_thread(
        _send, secured.address("smtp"), "sender@remote.test", ["alice@example.test"]
    )

    def report_arrived() -> bool:
        return any(mail_from in ("", "<>") for mail_from, _, _ in secured.sink.received)

    await eventually(lambda: _now(report_arrived()), "the failure report at the sink")
    assert any(rcpts == ["ok@remote.test"] for _, rcpts, _ in secured.sink.received)
    count = 0
    for _ in range(50):
        count = await asyncio.to_thread(_pop3_count, secured.address("pop3"))
        if count:
            break
        await asyncio.sleep(0.2)
    assert count == 1

    nc, js = await _admin(secured)
    try:
        info = await js.stream_info(subjects.EVENTS_STREAM)
        assert info.state.messages > 0
        # The operator's queue command answers under the admin user.
        reply = await nc.request(subjects.queue_api_subject("list"), b"{}", timeout=5)
        assert reply.data
    finally:
        await nc.close()
    assert secured.violations() == []


async def test_forbidden_publish_and_subscribe_are_refused(secured: Secured) -> None:
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    ingress = await nats.connect(
        secured.service_url("ingress"),
        inbox_prefix=subjects.inbox_prefix(subjects.service_name("ingress")),
        error_cb=on_error,
    )
    try:
        js = ingress.jetstream()
        forged = DeliverySucceeded(
            event_id="forged.r0",
            queue_id="FORGED",
            job_id="forged",
            attempt=1,
            recipient="x@y.test",
        )
        # Ingress may not claim a delivery: the server drops the publish, no ack comes.
        with pytest.raises(nats.errors.TimeoutError):
            await bus.publish_event(js, forged)
        # Nor read the delivery jobs.
        await ingress.subscribe(f"{subjects.JOBS_PREFIX}.>")
        await ingress.flush()
        await asyncio.sleep(0.3)
    finally:
        await ingress.close()

    nc, admin_js = await _admin(secured)
    try:
        assert "DeliverySucceeded" not in types(await history(admin_js, "FORGED"))
    finally:
        await nc.close()
    text = (" ".join(str(e) for e in errors) + " ".join(secured.violations())).lower()
    assert "permissions violation for publish" in text
    assert "permissions violation for subscription" in text
    # The server log records them too, so the clean run of the other test means something.
    assert len(secured.violations()) >= 2


async def _now(value: bool) -> bool:
    return value


def test_every_event_a_service_may_publish_exists() -> None:
    """A grant for an event type nobody defines is a hole waiting for a publisher."""
    known = {cls.__name__ for cls in EVENT_TYPES}
    # `mailbus.evt.*.<type>.*`: the type is the fourth token.
    granted = {
        subject.split(".")[3]
        for perms in permissions.service_permissions().values()
        for subject in perms.publish
        if subject.startswith(f"{subjects.EVENTS_PREFIX}.*.") and subject.endswith(".*")
    }
    assert granted and granted <= known, sorted(granted - known)


async def test_a_service_user_cannot_create_or_update_a_stream(secured: Secured) -> None:
    """Only `mailbus migrate` (the admin user) changes the topology: a service's user
    that tries to update a stream, or to create one, gets no answer but a violation."""
    errors: list[Exception] = []

    async def on_error(exc: Exception) -> None:
        errors.append(exc)

    queue = await nats.connect(
        secured.service_url("queue"),
        inbox_prefix=subjects.inbox_prefix(subjects.service_name("queue")),
        error_cb=on_error,
    )
    try:
        js = queue.jetstream(timeout=2)
        info = await js.stream_info(subjects.EVENTS_STREAM)  # verifying is allowed
        window = info.config.duplicate_window
        changed = info.config
        changed.duplicate_window = 60.0
        with pytest.raises(nats.errors.TimeoutError):
            await js.update_stream(changed)
        with pytest.raises(nats.errors.TimeoutError):
            await js.add_stream(name="MAILBUS_FORGED", subjects=["forged.>"])
    finally:
        await queue.close()
    nc, admin_js = await _admin(secured)
    try:
        after = await admin_js.stream_info(subjects.EVENTS_STREAM)
        assert after.config.duplicate_window == window != 60.0
        assert "MAILBUS_FORGED" not in [i.config.name for i in await admin_js.streams_info()]
    finally:
        await nc.close()
    text = " ".join(str(e) for e in errors).lower()
    update = f"$js.api.stream.update.{subjects.EVENTS_STREAM}".lower()
    assert f'permissions violation for publish to "{update}"' in text


async def test_a_service_refuses_to_start_without_the_topology(tmp_path: Path) -> None:
    """Before `mailbus migrate` ran: a service cannot create what lacks, so it does not
    start, and says what lacks and what to run."""
    passwords = {svc: secrets.token_urlsafe(16) for svc in subjects.SERVICES}
    server = EmbeddedNats(
        data_dir=tmp_path / "nats",
        log_file=tmp_path / "nats.log",
        extra_config=permissions.authorization_block(passwords, secrets.token_urlsafe(16)),
    )
    server.start()
    try:
        nc = await nats.connect(
            f"nats://mailbus-queue:{passwords['queue']}@127.0.0.1:{server.port}",
            inbox_prefix=subjects.inbox_prefix(subjects.service_name("queue")),
        )
        try:
            with pytest.raises(topology.TopologyMissing) as refused:
                await topology.prepare(nc.jetstream(timeout=2), 1)
        finally:
            await nc.close()
        assert subjects.EVENTS_STREAM in str(refused.value)
        assert "mailbus migrate" in str(refused.value)
    finally:
        server.stop()
