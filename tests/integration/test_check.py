"""`mailbus check`: policy's answers stage by stage, and which rule decided, from the
running policy service; asking counts nothing, so no dry run brings a block."""

from __future__ import annotations

import json

from libs.common.config import load_config_text
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import start_service
from services.policy.service import PolicyService
from tests.support.cli import mailbus

CONFIG = """
server: {hostname: mx.example.test, local_domains: [example.test]}
users: [{address: alice@example.test}]
ip_groups: {lan: [10.0.0.0/8]}
relay: {allowed_ip_group: lan}
security:
  require_sender_domain_dns: false
  directory_harvest: {max_unknown_recipients: 1, block_for: 1h}
antispam: {spf: false}
"""


async def _check(server: EmbeddedNats, *args: str) -> tuple[int, str, str]:
    return await mailbus("check", *args, "--nats-url", server.url, "--timeout", "5")


async def test_a_dry_run_names_the_rule_and_counts_nothing(nats_server: EmbeddedNats) -> None:
    running = await start_service(
        "policy", PolicyService, load_config_text(CONFIG), [nats_server.url]
    )
    try:
        rc, out, err = await _check(
            nats_server, "--client", "10.1.2.3", "--helo", "h.lan", "--from", "a@lan.test",
            "--to", "bob@remote.test",
        )  # fmt: skip
        assert rc == 0, err
        stages = [line.split()[0] for line in out.splitlines()]
        assert stages == ["connect", "helo", "mail", "rcpt", "data"], out
        assert "rule" in out

        rc, out, err = await _check(
            nats_server, "--client", "192.0.2.9", "--from", "s@a.test", "--to", "x@remote.test",
            "--json",
        )  # fmt: skip
        assert rc == 1, err
        answers = [json.loads(line) for line in out.splitlines()]
        assert [a["stage"] for a in answers] == ["connect", "mail", "rcpt"], out  # no DATA
        rcpt = answers[-1]
        assert rcpt["stage"] == "rcpt" and rcpt["code"] == 554 and rcpt["action"] == "reject"
        assert rcpt["message"] == "Relay access denied" and rcpt["rule"], rcpt

        # Unknown local recipients past the harvest limit would block a real client;
        # asked three times in a dry run, the answer stays "unknown", and no block.
        for _ in range(3):
            rc, out, _ = await _check(
                nats_server, "--client", "192.0.2.10", "--from", "s@a.test",
                "--to", "nobody@example.test",
            )  # fmt: skip
            assert rc == 1 and "550" in out and "blocked" not in out.lower(), out
        rc, out, err = await mailbus("blocks", "list", "--json", "--nats-url", nats_server.url)
        assert rc == 0 and "192.0.2.10" not in out, (out, err)
    finally:
        await running.close()


async def test_no_policy_is_exit_code_2(nats_server: EmbeddedNats) -> None:
    rc, _, err = await mailbus(
        "check", "--client", "192.0.2.1", "--nats-url", nats_server.url, "--timeout", "1"
    )
    assert rc == 2 and "mailbus check: policy does not answer" in err, err
