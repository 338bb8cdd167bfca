"""The mail log read by the tools operators already run over Postfix's: Debian's
pflogsumm counts what happened, fail2ban's stock postfix filter (normal and auth
modes, i.e. the postfix and postfix-sasl jails) finds the refused relay attempts
and the failed logins. Both are real programs (installed by the Makefile); a
missing one fails the test."""

from __future__ import annotations

import asyncio
import re
import shutil
import smtplib
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

from libs.common.mail.userhash import hash_password
from libs.common.runtime.embedded_nats import free_port
from tests.support.sink import Sink
from tests.support.streams import eventually
from tests.support.up import mailbus_up

DAEMON = r"_daemon=mailbus/\w+"


def _config(smtp: int, sink: int, password_hash: str) -> str:
    # Only 127.0.0.1 may relay: a client on 127.0.0.2 is refused as an outsider.
    return (
        "server: {hostname: mx.log.test, local_domains: [log.test]}\n"
        "listeners:\n"
        f"  - {{name: smtp, protocol: smtp, address: '127.0.0.1:{smtp}', tls: starttls}}\n"
        "users:\n"
        f"  - {{address: alice@log.test, password_hash: '{password_hash}'}}\n"
        "ip_groups: {lan: [127.0.0.1/32]}\n"
        "relay: {allowed_ip_group: lan, smtp_auth: true}\n"
        "security: {require_sender_domain_dns: false}\n"
        "antispam: {spf: false}\n"
        "delivery:\n"
        f"  {{mode: relay, relay_host: {{host: 127.0.0.1, port: {sink}}}, tls: none}}\n"
    )


def _send(port: int, rcpt: str, source: str = "127.0.0.1") -> None:
    with smtplib.SMTP("127.0.0.1", port, source_address=(source, 0), timeout=10) as client:
        client.sendmail("alice@log.test", [rcpt], b"Subject: t\r\n\r\nbody\r\n")


def _failed_login(port: int) -> None:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, source_address=("127.0.0.3", 0), timeout=10) as client:
        client.starttls(context=context)
        try:
            client.login("alice@log.test", "not the password")
        except smtplib.SMTPAuthenticationError:
            return
    raise AssertionError("a wrong password was accepted")


async def _run(*args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text
    return text


def _count(report: str, what: str) -> int:
    found = re.search(rf"^\s*(\d+)\s+{what}\b", report, re.MULTILINE)
    assert found, f"no {what!r} in pflogsumm's report:\n{report}"
    return int(found.group(1))


def _matched(output: str) -> int:
    found = re.search(r"Lines: \d+ lines, \d+ ignored, (\d+) matched", output)
    assert found, output
    return int(found.group(1))


async def test_pflogsumm_and_fail2ban_read_the_mail_log(
    tmp_path: Path, sink_factory: Callable[..., tuple[Sink, int]]
) -> None:
    pflogsumm, f2b = shutil.which("pflogsumm"), shutil.which("fail2ban-regex")
    assert pflogsumm and f2b, "pflogsumm and fail2ban-regex are needed (make test installs them)"
    _, sink_port = sink_factory(
        replies={
            "defer@remote.test": "451 4.3.0 Try again later",
            "bounce@remote.test": "550 5.1.1 No such user",
        }
    )
    smtp = free_port()
    config = _config(smtp, sink_port, hash_password("the password"))
    async with mailbus_up(tmp_path, config) as up:
        for rcpt in ("ok@remote.test", "defer@remote.test", "bounce@remote.test"):
            await asyncio.to_thread(_send, smtp, rcpt)
        for _ in range(2):
            refused = await asyncio.to_thread(_expect_refused, smtp, "x@remote.test", "127.0.0.2")
            assert refused.startswith("554 5.7.1"), refused
            await asyncio.to_thread(_failed_login, smtp)

        def logged(needle: str, times: int = 1) -> Callable[[], Awaitable[bool]]:
            async def check() -> bool:
                return sum(needle in line for line in up.output) >= times

            return check

        await eventually(logged("status=sent", 2), "two deliveries in the log", within=60)
        await eventually(logged("status=deferred"), "a deferral in the log", within=60)
        await eventually(logged("status=bounced"), "a bounce in the log", within=60)
        await eventually(logged("sender non-delivery notification"), "the report", within=60)
        await eventually(logged("authentication failed", 4), "the failed logins", within=30)
    log = tmp_path / "mail.log"
    log.write_text("".join(up.output))

    report = await _run(pflogsumm, "--syslog-name=mailbus", str(log))
    assert _count(report, "received") == 3, report
    # The message and the bounce report sent to its sender, alice@log.test (a mailbox).
    assert _count(report, "delivered") == 2, report
    assert _count(report, "deferred") == 1, report
    assert _count(report, "bounced") == 1, report
    assert _count(report, "rejected") == 2, report
    assert "Relay access denied" in report, report

    relays = await _run(f2b, "--print-all-matched", str(log), f"postfix[{DAEMON}]")
    assert _matched(relays) == 2, relays
    assert "unknown[127.0.0.2]" in relays and "unknown[127.0.0.3]" not in relays, relays
    logins = await _run(f2b, "--print-all-matched", str(log), f"postfix[mode=auth, {DAEMON}]")
    # smtplib's login tries PLAIN, then LOGIN: two failed AUTH commands per login.
    assert _matched(logins) == 4, logins
    assert "unknown[127.0.0.3]" in logins, logins


def _expect_refused(port: int, rcpt: str, source: str) -> str:
    try:
        _send(port, rcpt, source)
    except smtplib.SMTPRecipientsRefused as exc:
        code, text = exc.recipients[rcpt]
        return f"{code} {text.decode()}"
    raise AssertionError("relay from an outsider was accepted")
