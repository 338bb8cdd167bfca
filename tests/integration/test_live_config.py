"""Configuration revisions applied live, over real SMTP sessions and a real nats-server.

Two policy and two ingress replicas run in this process; `mailbus config ...`
runs as the operator runs it, as a process of its own. Clients bind to
loopback addresses to be inside or outside `relay.allowed_ip_group`:
127.0.0.2 is always inside, 127.0.0.3 only after the change.
"""

from __future__ import annotations

import asyncio
import json
import signal
import smtplib
import ssl
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from nats.js import JetStreamContext

from libs.common.config import load_config_text
from libs.common.config.revisions import Revision
from libs.common.contract import subjects
from libs.common.contract.events import MessageReceived, parse_event
from libs.common.mail.tlsutil import self_signed_pem
from libs.common.runtime import bus, liveconfig
from libs.common.runtime.embedded_nats import EmbeddedNats, free_port
from libs.common.runtime.service import start_service
from services.ingress.service import IngressService
from services.policy.adapters.counters import SlidingCounters
from services.policy.core import HOUR
from tests.support.cli import mailbus
from tests.support.sink import Sink
from tests.support.stack import Stack, running_stack, unverified
from tests.support.streams import eventually
from tests.support.up import mailbus_up

pytestmark = pytest.mark.asyncio

INSIDE = "127.0.0.2"
NEWCOMER = "127.0.0.3"
REMOTE = "bob@remote.test"
LOAD_SESSIONS = 200  # per load thread, at most
LOAD_SECONDS = 20.0


def config_text(office: str, extra: str = "") -> str:
    return (
        "server: {hostname: mx.example.test, local_domains: [example.test]}\n"
        "listeners:\n"
        "  - {name: smtp, protocol: smtp, address: '127.0.0.1:0', tls: none}\n"
        f"ip_groups: {{office: [{office}]}}\n"
        "relay: {allowed_ip_group: office}\n"
        "security: {require_sender_domain_dns: false}\n"
        f"{extra}"
    )


def rcpt_code(addr: tuple[str, int], source: str, rcpt: str = REMOTE) -> int:
    with smtplib.SMTP(*addr, timeout=10, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.test")
        code, _ = smtp.mail("alice@remote.test")
        assert code == 250
        code, _ = smtp.rcpt(rcpt)
        return code


def deliver(addr: tuple[str, int], source: str) -> None:
    """One whole message, accepted (sendmail raises on any refusal)."""
    with smtplib.SMTP(*addr, timeout=10, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.test")
        smtp.sendmail("alice@remote.test", [REMOTE], b"Subject: hi\r\n\r\nhello\r\n")


async def apply(path: Path, url: str, *more: str) -> tuple[int, str, str]:
    return await mailbus("config", "apply", *more, str(path), "--nats-url", url, "--timeout", "10")


async def active_revision(js: JetStreamContext) -> int:
    current = await liveconfig.read(js)
    return current[0] if current else 0


def every_replica(stack: Stack) -> list[tuple[str, int]]:
    return [stack.address("smtp", i) for i in range(len(stack.ingress))]


class Load:
    """Sessions from an inside client on every replica while the configuration changes."""

    def __init__(self, stack: Stack) -> None:
        self.addresses = every_replica(stack)
        self.stop = threading.Event()
        self.done = 0
        self.failures: list[str] = []

    def run(self) -> None:
        for n in range(LOAD_SESSIONS):
            if self.stop.is_set():
                return
            addr = self.addresses[n % len(self.addresses)]
            try:
                code = rcpt_code(addr, INSIDE)
            except Exception as exc:  # a dropped session is what this must never see
                self.failures.append(f"{addr}: {exc!r}")
                continue
            if code != 250:
                self.failures.append(f"{addr}: RCPT {code}")
            self.done += 1


async def test_relay_rule_change_reaches_every_replica_and_rolls_back(tmp_path: Path) -> None:
    path = tmp_path / "mailbus.yaml"
    path.write_text(config_text(INSIDE))
    async with running_stack(
        tmp_path, lambda _: path.read_text(), ["policy", "policy", "ingress", "ingress", "queue"]
    ) as stack:
        rc, out, err = await apply(path, stack.url)
        assert rc == 0, err
        first = await active_revision(stack.js)
        for addr in every_replica(stack):
            assert await asyncio.to_thread(rcpt_code, addr, NEWCOMER) == 554

        # A session opened under the old rule, left open across the change.
        open_session = await connect(stack.address("smtp", 0))
        try:
            await asyncio.to_thread(open_session.ehlo, "client.test")
            load = Load(stack)
            loader = asyncio.create_task(asyncio.to_thread(load.run))
            path.write_text(config_text(f"{INSIDE}, {NEWCOMER}"))
            rc, out, err = await apply(path, stack.url)
            assert rc == 0, err
            second = await active_revision(stack.js)
            assert second > first
            assert "ip_groups.office" in out
            # Every new connection on every replica, right after apply returns.
            for _ in range(4):  # four each, so both policy replicas answer some
                for addr in every_replica(stack):
                    assert await asyncio.to_thread(rcpt_code, addr, NEWCOMER) == 250
            status = await liveconfig.replicas(stack.nc)
            assert len(status) == 5
            assert {int(str(r["revision"])) for r in status} == {second}

            rc, out, err = await mailbus(
                "config", "rollback", str(first), "--nats-url", stack.url, "--timeout", "10"
            )
            assert rc == 0, err
            for _ in range(4):
                for addr in every_replica(stack):
                    assert await asyncio.to_thread(rcpt_code, addr, NEWCOMER) == 554
            load.stop.set()
            await asyncio.wait_for(loader, LOAD_SECONDS)
            assert load.done > 0
            assert load.failures == []

            # The session opened before both changes still works, under the latest rule.
            code, _ = await asyncio.to_thread(open_session.mail, "alice@remote.test")
            assert code == 250
            code, _ = await asyncio.to_thread(open_session.rcpt, REMOTE)
            assert code == 250
            code, text = await asyncio.to_thread(
                open_session.data, b"Subject: still here\r\n\r\nhello\r\n"
            )
            assert code == 250, text
        finally:
            await asyncio.to_thread(open_session.close)
        qid = text.decode().rsplit(" ", 1)[-1]
        third = await active_revision(stack.js)
        events = await received(stack.js, qid)
        assert events[0].config_revision == third

        rc, out, err = await mailbus("config", "history", "--nats-url", stack.url)
        assert rc == 0, err
        assert f"rollback {first}" in out
        rc, out, err = await mailbus(
            "config", "diff", str(first), str(second), "--nats-url", stack.url
        )
        assert rc == 0, err
        assert 'ip_groups.office: ["127.0.0.2"] -> ["127.0.0.2", "127.0.0.3"]' in out
        rc, out, err = await mailbus("queue", "show", qid, "--nats-url", stack.url)
        assert f"under configuration revision {third}" in out, out + err


async def received(js: JetStreamContext, qid: str) -> list[MessageReceived]:
    raw = await js.get_last_msg(
        subjects.EVENTS_STREAM, subjects.event_subject(qid, "MessageReceived")
    )
    event = parse_event(raw.data or b"")
    assert isinstance(event, MessageReceived)
    return [event]


async def test_invalid_file_is_refused_with_check_errors_and_nothing_changes(
    tmp_path: Path,
) -> None:
    path = tmp_path / "mailbus.yaml"
    path.write_text(config_text(INSIDE))
    bad = tmp_path / "bad.yaml"
    bad.write_text(config_text(INSIDE).replace("relay: {", "relay: {allowed_ip_grup: x, "))
    async with running_stack(tmp_path, lambda _: path.read_text(), ["policy"]) as stack:
        rc, _, err = await apply(path, stack.url)
        assert rc == 0, err
        before = await liveconfig.history(stack.js)
        check_rc, _, check_err = await mailbus("config", "check", str(bad))
        rc, out, err = await apply(bad, stack.url)
        assert (rc, check_rc) == (2, 2)
        assert err == check_err
        assert "relay.allowed_ip_grup" in err and "bad.yaml:" in err
        assert out == ""
        assert await liveconfig.history(stack.js) == before


async def test_renewed_certificate_for_new_starttls_sessions(tmp_path: Path) -> None:
    text, old_cert = with_certificate(tmp_path)
    cert, key, path = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "mailbus.yaml"
    async with running_stack(tmp_path, lambda _: text, ["policy", "ingress"]) as stack:
        addr = stack.address("smtp")
        old = await connect(addr)
        try:
            await asyncio.to_thread(starttls, old)
            before = peer_certificate(old)
            new_cert, new_key = self_signed_pem("mx.example.test")
            cert.write_bytes(new_cert)
            key.write_bytes(new_key)
            rc, _, err = await apply(path, stack.url)
            assert rc == 0, err
            fresh = await connect(addr)
            try:
                await asyncio.to_thread(starttls, fresh)
                assert peer_certificate(fresh) != before
                assert peer_certificate(fresh) == ssl.PEM_cert_to_DER_cert(new_cert.decode())
            finally:
                await asyncio.to_thread(fresh.quit)
            # The session from before the renewal goes on, with the certificate it had.
            assert peer_certificate(old) == ssl.PEM_cert_to_DER_cert(old_cert.decode())
            code, _ = await asyncio.to_thread(old.mail, "alice@remote.test")
            assert code == 250
        finally:
            await asyncio.to_thread(old.quit)


def with_certificate(tmp_path: Path) -> tuple[str, bytes]:
    """mailbus.yaml with STARTTLS from cert.pem and key.pem; its text and the certificate."""
    cert_pem, key_pem = self_signed_pem("mx.example.test")
    (tmp_path / "cert.pem").write_bytes(cert_pem)
    (tmp_path / "key.pem").write_bytes(key_pem)
    text = config_text(INSIDE).replace("tls: none", "tls: starttls") + (
        f"tls: {{cert_file: {tmp_path / 'cert.pem'}, key_file: {tmp_path / 'key.pem'}}}\n"
    )
    (tmp_path / "mailbus.yaml").write_text(text)
    return text, cert_pem


async def connect(addr: tuple[str, int], source: str = INSIDE) -> smtplib.SMTP:
    """Off the event loop: the servers under test run on it."""
    return await asyncio.to_thread(smtplib.SMTP, *addr, timeout=10, source_address=(source, 0))


def starttls(smtp: smtplib.SMTP) -> None:
    smtp.ehlo("client.test")
    smtp.starttls(context=unverified())
    smtp.ehlo("client.test")


def peer_certificate(smtp: smtplib.SMTP) -> bytes:
    sock = smtp.sock
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


async def message_count(js: JetStreamContext, ip: str) -> int:
    counted = await SlidingCounters(js, HOUR).get(subjects.message_count_key(ip))
    return counted.total(HOUR, datetime.now(UTC)) if counted is not None else 0


async def test_shadow_would_refuse_a_sender_and_moves_no_counter(tmp_path: Path) -> None:
    limit = "security: {require_sender_domain_dns: false, max_messages_per_hour_per_ip: %d}\n"
    active = config_text(INSIDE).replace(
        "security: {require_sender_domain_dns: false}\n", limit % 100
    )
    shadow = active.replace(limit % 100, limit % 1)
    path, shadow_path = tmp_path / "mailbus.yaml", tmp_path / "shadow.yaml"
    path.write_text(active)
    shadow_path.write_text(shadow)
    async with running_stack(tmp_path, lambda _: active, ["policy", "policy", "ingress"]) as stack:
        assert (await apply(path, stack.url))[0] == 0
        rc, out, err = await apply(shadow_path, stack.url, "--shadow")
        assert rc == 0, err
        addr = stack.address("smtp")
        sent = 3
        for _ in range(sent):  # all accepted: only the active limit (100) is enforced
            await asyncio.to_thread(deliver, addr, INSIDE)
        # Counted once per message, by the active revision alone.
        assert await message_count(stack.js, INSIDE) == sent

        async def reported() -> bool:
            rc, out, _ = await mailbus("config", "shadow-report", "--json", "--nats-url", stack.url)
            return rc == 0 and json.loads(out)["would_refuse"] == sent - 1

        await eventually(reported, "the shadow's refusals in the report")
        rc, out, err = await mailbus("config", "shadow-report", "--nats-url", stack.url)
        assert rc == 0, err
        assert "mail     active mail_ok -> shadow max_messages_per_hour_per_ip" in out, out
        assert '"alice@remote.test"' in out
        assert await message_count(stack.js, INSIDE) == sent

        rc, out, err = await mailbus(
            "config", "promote", "--nats-url", stack.url, "--timeout", "10"
        )
        assert rc == 0, err
        # Promoted, the limit of one message an hour is enforced.
        assert await asyncio.to_thread(mail_code, addr, INSIDE) == 450
        rc, out, _ = await mailbus("config", "history", "--nats-url", stack.url)
        assert "promote" in out


def mail_code(addr: tuple[str, int], source: str) -> int:
    with smtplib.SMTP(*addr, timeout=10, source_address=(source, 0)) as smtp:
        smtp.ehlo("client.test")
        code, _ = smtp.mail("alice@remote.test")
        return code


async def test_sighup_to_mailbus_up_applies_the_edited_file(tmp_path: Path) -> None:
    port = free_port()
    listener = (
        f"listeners:\n  - {{name: smtp, protocol: smtp, address: '127.0.0.1:{port}', tls: none}}\n"
    )
    text = config_text(INSIDE).replace(
        "listeners:\n  - {name: smtp, protocol: smtp, address: '127.0.0.1:0', tls: none}\n",
        listener,
    )
    data_dir = ["--data-dir", str(tmp_path / "var")]
    async with mailbus_up(tmp_path, text) as up:
        rc, out, err = await mailbus("config", "history", *data_dir)
        assert rc == 0, err
        assert "-- 1 revision(s)" in out and " start " in out, out
        addr = ("127.0.0.1", port)
        assert await asyncio.to_thread(rcpt_code, addr, NEWCOMER) == 554

        (tmp_path / "mailbus.yaml").write_text(text.replace(INSIDE, f"{INSIDE}, {NEWCOMER}"))
        up.proc.send_signal(signal.SIGHUP)

        async def applied() -> bool:
            rc, out, _ = await mailbus("config", "status", "--json", *data_dir)
            found = json.loads(out) if rc == 0 else []
            return len(found) == len(subjects.SERVICES) and all(
                r["revision"] >= 2 and not r["failed"] for r in found
            )

        await eventually(applied, "every service on the reloaded revision")
        assert await asyncio.to_thread(rcpt_code, addr, NEWCOMER) == 250
        rc, out, _ = await mailbus("config", "history", *data_dir)
        assert " reload " in out and "ip_groups.office" in out, out
        # `mailbus status` is where an operator looks first: each replica and its revision.
        rc, out, err = await mailbus("status", "--json", *data_dir)
        assert rc == 0, err
        replicas = json.loads(out)
        assert {r["service"] for r in replicas} == set(subjects.SERVICES), replicas
        assert all(r["revision"] >= 2 for r in replicas), replicas
        assert up.proc.returncode is None  # SIGHUP no longer stops anything


async def test_a_replica_that_cannot_apply_keeps_its_revision_and_says_so(
    tmp_path: Path,
) -> None:
    text, good_cert = with_certificate(tmp_path)
    key, path = tmp_path / "key.pem", tmp_path / "mailbus.yaml"
    async with running_stack(tmp_path, lambda _: text, ["policy", "ingress"]) as stack:
        rc, _, err = await apply(path, stack.url)
        assert rc == 0, err
        first = await active_revision(stack.js)
        # A key that does not belong to the certificate: valid to `check`, not to TLS.
        key.write_bytes(self_signed_pem("mx.example.test")[1])
        path.write_text(text.replace(INSIDE, f"{INSIDE}, {NEWCOMER}"))
        rc, out, err = await apply(path, stack.url)
        assert rc == 1
        assert "1 replica(s) refused it" in err
        second = await active_revision(stack.js)
        by_service = {r["service"]: r for r in await liveconfig.replicas(stack.nc)}
        assert by_service["policy"]["revision"] == second
        assert (by_service["ingress"]["revision"], by_service["ingress"]["failed"]) == (
            first,
            second,
        )
        assert "ingress" in out and f"refused {second}" in out
        # Ingress still presents the certificate of the revision it runs.
        fresh = await connect(stack.address("smtp"))
        try:
            await asyncio.to_thread(starttls, fresh)
            assert peer_certificate(fresh) == ssl.PEM_cert_to_DER_cert(good_cert.decode())
        finally:
            await asyncio.to_thread(fresh.quit)


async def test_a_follower_keeps_following_across_a_nats_server_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(data_dir=tmp_path / "nats", log_file=tmp_path / "nats.log")
    await server.astart()
    nc = await bus.connect([server.url], name="test")
    try:
        js = await bus.wait_for_jetstream(nc)
        await bus.ensure_topology(js)
        live = liveconfig.LiveConfig("follower-test", "i1", load_config_text(""))
        follower = liveconfig.ConfigFollower(js, nc, live, resync_s=0.2)
        await follower.start()
        record = Revision(
            text=config_text(INSIDE),
            source=str(tmp_path / "mailbus.yaml"),
            base_dir=str(tmp_path),
            applied_at=datetime.now(UTC),
            applied_by="test",
            action="apply",
        )
        first = await liveconfig.publish(js, record)

        async def runs(number: int) -> bool:
            return live.revision == number

        await eventually(lambda: runs(first), "the first revision", within=5)
        await server.astop()
        await server.astart()  # same port, same store: the bucket is still there
        second = await liveconfig.publish(await bus.wait_for_jetstream(nc), record)
        await eventually(lambda: runs(second), "the revision after the restart", within=10)
        await follower.stop()
    finally:
        await nc.close()
        await server.astop()


async def test_a_new_listener_address_waits_for_the_restart_which_applies_it(
    tmp_path: Path,
) -> None:
    old_port, new_port = free_port(), free_port()
    listener = "address: '127.0.0.1:0'"
    text = config_text(INSIDE).replace(listener, f"address: '127.0.0.1:{old_port}'")
    path = tmp_path / "mailbus.yaml"
    path.write_text(text)
    async with running_stack(tmp_path, lambda _: text, ["policy", "ingress"]) as stack:
        assert (await apply(path, stack.url))[0] == 0
        path.write_text(text.replace(str(old_port), str(new_port)))
        rc, out, err = await apply(path, stack.url)
        assert rc == 0, err
        assert "listeners[smtp].address: applied at the next restart" in out
        assert stack.address("smtp") == ("127.0.0.1", old_port)
        # Restarted with the file it was first given, ingress runs the active revision.
        running = stack.running.pop()
        await running.close()
        stack.running.append(
            await start_service("ingress", IngressService, stack.config, [stack.url])
        )
        assert stack.address("smtp") == ("127.0.0.1", new_port)
        assert stack.running[-1].ctx.live.revision == await active_revision(stack.js)


async def test_a_new_relay_host_takes_the_next_message(
    tmp_path: Path, sink_factory: Callable[..., tuple[Sink, int]]
) -> None:
    """Delivery settings live: the queue and delivery take the new revision too."""
    other, other_port = sink_factory()

    def text(port: int) -> str:
        relay = (
            f"delivery: {{mode: relay, relay_host: {{host: 127.0.0.1, port: {port}}}, tls: none}}\n"
        )
        return config_text(INSIDE) + relay

    path = tmp_path / "mailbus.yaml"
    first_port: list[int] = []

    def initial(port: int) -> str:
        first_port.append(port)  # the stack's own sink
        return text(port)

    async with running_stack(
        tmp_path, initial, ["policy", "ingress", "queue", "delivery"]
    ) as stack:
        path.write_text(text(first_port[0]))
        assert (await apply(path, stack.url))[0] == 0
        addr = stack.address("smtp")
        await asyncio.to_thread(deliver, addr, INSIDE)

        async def arrived(sink: Sink, count: int) -> bool:
            return len(sink.received) == count

        await eventually(lambda: arrived(stack.sink, 1), "the first message at the first relay")
        path.write_text(text(other_port))
        rc, out, err = await apply(path, stack.url)
        assert rc == 0, err
        assert "delivery.relay_host.port" in out
        await asyncio.to_thread(deliver, addr, INSIDE)
        await eventually(lambda: arrived(other, 1), "the second message at the new relay")
        assert len(stack.sink.received) == 1
