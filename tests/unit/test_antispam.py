"""Antispam without the network: policy's decisions on SPF and spamd results, ingress's
trace headers, the config keys, the event's new field read from old events."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Literal

import authres
import pytest

from libs.common.config import ConfigError, load_config_text
from libs.common.contract import replies, subjects
from libs.common.contract.antispam import AntispamResults, SpamVerdict, SpfResult
from libs.common.contract.events import MessageReceived, parse_event
from libs.common.contract.policy import PolicyDecision, PolicyQuery, Session
from libs.common.runtime.embedded_nats import EmbeddedNats
from services.ingress.core import antispam as headers
from services.policy.core import antispam as core
from services.policy.core.grants import Pop3Grant
from services.policy.service import antispam_from_config

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
ROOT = Path(__file__).resolve().parents[2]
GROUP_IP = "192.0.2.10"
OUTSIDE_IP = "198.51.100.7"


class Group:
    def contains(self, ip: str) -> bool:
        return ip == GROUP_IP


def query(stage: str = "mail", ip: str = OUTSIDE_IP, auth: str | None = None) -> PolicyQuery:
    session = Session(session_id="s1", client_ip=ip, helo="client.test", auth_user=auth)
    return PolicyQuery(stage=stage, session=session, mail_from="a@sender.test", size=100)


def spf(result: str) -> SpfResult:
    return SpfResult(
        result=result,
        identity="mailfrom",
        sender="a@sender.test",
        domain="sender.test",
        client_ip=OUTSIDE_IP,
        helo="client.test",
    )


MAIL_OK = PolicyDecision.of(replies.SENDER_OK, "mail_ok")
DATA_OK = PolicyDecision.accept("data_ok")
RULES = core.AntispamRules(spf=True, scan=True, spamd_max_size=1000)


# --- policy: SPF -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("result", "fail", "softfail", "reply", "rule"),
    [
        ("pass", "reject", "reject", "250 2.1.0", "mail_ok"),
        ("fail", "reject", "tag", "550 5.7.23", "spf_fail"),
        ("fail", "tag", "tag", "250 2.1.0", "mail_ok"),
        ("softfail", "reject", "tag", "250 2.1.0", "mail_ok"),
        ("softfail", "reject", "reject", "550 5.7.23", "spf_softfail"),
        ("neutral", "reject", "reject", "250 2.1.0", "mail_ok"),
        ("none", "reject", "reject", "250 2.1.0", "mail_ok"),
        ("temperror", "tag", "tag", "451 4.7.24", "spf_temperror"),
        ("permerror", "reject", "reject", "250 2.1.0", "mail_ok"),
    ],
)
def test_each_spf_result_and_action(
    result: str, fail: core.Action, softfail: core.Action, reply: str, rule: str
) -> None:
    rules = core.AntispamRules(spf=True, spf_fail_action=fail, spf_softfail_action=softfail)
    decision = core.after_spf(MAIL_OK, spf(result), rules)
    assert (f"{decision.code} {decision.status}", decision.rule) == (reply, rule)
    if decision.accepted:
        assert decision.antispam == AntispamResults(spf=spf(result))


def test_the_refusal_names_the_domain_and_client_not_the_records_text() -> None:
    refused = core.after_spf(MAIL_OK, spf("fail").model_copy(update={"explanation": "evil"}), RULES)
    assert refused.message == f"SPF fail: {OUTSIDE_IP} is not allowed to send mail from sender.test"


# --- policy: who is skipped ------------------------------------------------------------------


def grant(ip: str, until: datetime) -> Pop3Grant:
    return Pop3Grant(client_ip=ip, user="u@example.test", granted_at=NOW, expires_at=until)


@pytest.mark.parametrize(
    ("q", "for_group", "found", "reason"),
    [
        (query(ip=GROUP_IP), False, None, "allowed_ip_group"),
        (query(ip=GROUP_IP), True, None, None),
        (query(auth="alice@example.test"), False, None, "authenticated"),
        (query(auth="alice@example.test", ip=GROUP_IP), True, None, "authenticated"),
        (query(), False, grant(OUTSIDE_IP, NOW + timedelta(minutes=5)), "pop3_before_smtp"),
        (query(), False, grant(OUTSIDE_IP, NOW - timedelta(minutes=5)), None),
        (query(), False, grant("203.0.113.1", NOW + timedelta(minutes=5)), None),
        (query(), False, None, None),
    ],
)
def test_who_skips_the_checks(
    q: PolicyQuery, for_group: bool, found: Pop3Grant | None, reason: str | None
) -> None:
    rules = core.AntispamRules(spf=True, for_allowed_group=for_group)
    assert core.skip_reason(q, rules, Group(), NOW, found) == reason


def test_the_exempt_group_is_not_skipped() -> None:
    config = load_config_text(
        "server: {hostname: mx.test}\nip_groups: {trusted: [198.51.100.0/24]}\n"
        "security: {exempt_ip_group: trusted}\n"
    )
    rules = antispam_from_config(config)
    assert core.skip_reason(query(), rules, None, NOW) is None


def test_only_an_accepted_stage_is_checked() -> None:
    assert core.wanted(query("mail"), RULES, MAIL_OK)
    assert not core.wanted(query("mail"), RULES, PolicyDecision.accept("helo_ok"))
    assert core.wanted(query("mail"), core.AntispamRules(scan=True), MAIL_OK)  # says who skips
    assert not core.wanted(query("mail"), core.AntispamRules(), MAIL_OK)
    assert core.wanted(query("data"), RULES, DATA_OK)
    assert not core.wanted(query("data"), core.AntispamRules(spf=True), DATA_OK)


# --- policy: spamd ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("score", "reply", "result"),
    [
        (1.0, "250 2.0.0", "clean"),
        (5.0, "250 2.0.0", "spam"),
        (9.9, "250 2.0.0", "spam"),
        (10.0, "550 5.7.1", None),
    ],
)
def test_the_score_tags_or_refuses(score: float, reply: str, result: str | None) -> None:
    decision = core.after_scan(DATA_OK, core.verdict_of(score, ("A",), RULES), RULES)
    assert f"{decision.code} {decision.status}" == reply
    if result is not None:
        assert decision.antispam is not None and decision.antispam.spam is not None
        assert decision.antispam.spam.result == result


@pytest.mark.parametrize("failure", ["spamd_unavailable", "spamd_timeout"])
def test_spamd_failure_accepts_unscanned_or_tempfails(
    failure: Literal["spamd_unavailable", "spamd_timeout"],
) -> None:
    accepted = core.after_scan(DATA_OK, core.failed_scan(failure, RULES), RULES)
    assert accepted.accepted and accepted.antispam is not None
    assert accepted.antispam.spam == SpamVerdict(result="unscanned", unscanned=failure)
    tempfail = core.AntispamRules(scan=True, spamd_failure="tempfail")
    refused = core.after_scan(DATA_OK, core.failed_scan(failure, tempfail), tempfail)
    assert (refused.code, refused.status, refused.rule) == (451, "4.7.1", "spamd_failure")


def test_too_big_or_not_sent_is_unscanned_and_anything_else_is_asked() -> None:
    big = query("data").model_copy(update={"size": 1001})
    assert core.unscanned_verdict(big, RULES, sent=False) == SpamVerdict(
        result="unscanned", unscanned="too_big"
    )
    assert core.unscanned_verdict(query("data"), RULES, sent=True) is None
    verdict = core.unscanned_verdict(query("data"), RULES, sent=False)
    assert verdict is not None and verdict.unscanned == "not_sent"


# --- ingress: headers ------------------------------------------------------------------------


def test_client_text_in_received_spf_is_escaped() -> None:
    odd = spf("pass").model_copy(
        update={"sender": 'x(")\\@sender.test', "helo": "evil\r\nX-Injected: 1"}
    )
    line = headers.received_spf(odd, "mx.test")
    assert "\r\nX-Injected" not in line and "evil??X-Injected" in line
    assert 'domain of x\\("\\)\\\\@sender.test designates' in line
    assert 'envelope-from="x(\\")\\\\@sender.test"' in line


def test_authentication_results_parses_back() -> None:
    text = headers.authentication_results(spf("softfail"), "mx.test")
    parsed = authres.AuthenticationResultsHeader.parse(text)
    assert parsed.authserv_id == "mx.test"
    assert [(r.method, r.result) for r in parsed.results] == [("spf", "softfail")]


def test_the_helo_identity_is_named_as_such() -> None:
    helo = spf("fail").model_copy(
        update={"identity": "helo", "sender": "postmaster@client.test", "domain": "client.test"}
    )
    assert "smtp.helo=client.test" in headers.authentication_results(helo, "mx.test")
    line = headers.received_spf(helo, "mx.test")
    assert "identity=helo" in line and "envelope-from" not in line


def test_spam_headers_as_spamassassin_writes_them() -> None:
    tests = (*(f"RULE_NUMBER_{n}" for n in range(12)), "bad rule\r\n")
    verdict = SpamVerdict(result="spam", score=7.25, tag_score=5.0, tests=tests)
    written = headers.spam_headers(verdict)
    assert written[:2] == ["X-Spam-Flag: YES", "X-Spam-Score: 7.2"]
    status = written[2]
    assert status.startswith("X-Spam-Status: Yes, score=7.2 required=5.0 tests=RULE_NUMBER_0,")
    assert all(len(line) <= 78 for line in status.split("\r\n"))
    assert all(line.startswith("\t") for line in status.split("\r\n")[1:])
    assert "bad rule" not in status
    low = headers.spam_headers(SpamVerdict(result="clean", score=-0.1, tests=("ALL_TRUSTED",)))
    assert low == [
        "X-Spam-Score: -0.1",
        "X-Spam-Status: No, score=-0.1 required=5.0 tests=ALL_TRUSTED",
    ]
    assert headers.spam_headers(SpamVerdict(result="unscanned", unscanned="too_big")) == []


def test_trace_headers_are_newest_first() -> None:
    results = AntispamResults(spf=spf("pass"), spam=SpamVerdict(result="clean", score=0.0))
    names = [
        line.split(":")[0]
        for line in headers.trace_headers(results, "mx.test").decode().split("\r\n")
        if line and not line.startswith("\t")
    ]
    assert names == ["X-Spam-Score", "X-Spam-Status", "Authentication-Results", "Received-SPF"]
    assert headers.trace_headers(None, "mx.test") == b""
    assert headers.trace_headers(AntispamResults(skipped="authenticated"), "mx.test") == b""


def test_forged_results_in_our_name_go_and_the_rest_stays() -> None:
    message = (
        b"Authentication-Results: MX.test.; spf=pass\r\n"
        b"Subject: hi\r\n"
        b"Authentication-Results:\r\n (a comment) mx.test 1;\r\n spf=pass\r\n"
        b"Authentication-Results: other.test; spf=fail\r\n"
        b"Authentication-Results-X: mx.test; none\r\n"
        b"\r\n"
        b"Authentication-Results: mx.test; in the body, untouched\r\n"
    )
    assert headers.without_forged_results(message, "mx.test") == (
        b"Subject: hi\r\n"
        b"Authentication-Results: other.test; spf=fail\r\n"
        b"Authentication-Results-X: mx.test; none\r\n"
        b"\r\n"
        b"Authentication-Results: mx.test; in the body, untouched\r\n"
    )
    clean = b"Subject: hi\r\n\r\nbody\r\n"
    assert headers.without_forged_results(clean, "mx.test") is clean


def test_mail_and_data_results_merge() -> None:
    mail = AntispamResults(spf=spf("pass"))
    data = AntispamResults(spam=SpamVerdict(result="clean", score=1.0))
    assert headers.merged(mail, data) == AntispamResults(spf=spf("pass"), spam=data.spam)
    assert headers.merged(None, None) is None
    skipped = AntispamResults(skipped="allowed_ip_group")
    assert headers.merged(skipped, None) == skipped


# --- the event and the config ----------------------------------------------------------------


def test_an_event_from_before_the_field_reads_as_no_results() -> None:
    old = json.loads((ROOT / "tests/golden/MessageReceived.v1.json").read_text())
    del old["antispam"]
    event = parse_event(json.dumps(old))
    assert isinstance(event, MessageReceived) and event.antispam is None


def test_summary_for_queue_show() -> None:
    both = AntispamResults(spf=spf("softfail"), spam=SpamVerdict(result="spam", score=6.04))
    assert both.summary() == "spf=softfail spam=spam(6.0)"
    assert AntispamResults(skipped="authenticated").summary() == "skipped (authenticated)"


def test_the_new_keys_load_and_bad_values_name_the_key() -> None:
    config = load_config_text(
        "server: {hostname: mx.test}\n"
        "antispam: {spf_softfail_action: reject, spamd: '127.0.0.1:783', spamd_timeout: 5s,\n"
        "  spamd_max_size: 1MB, spamd_failure: tempfail, spam_tag_score: 4.5}\n"
    )
    rules = antispam_from_config(config)
    assert (rules.spf_softfail_action, rules.scan, rules.spamd_failure) == (
        "reject",
        True,
        "tempfail",
    )
    assert (rules.spamd_max_size, rules.spam_tag_score) == (1024 * 1024, 4.5)
    assert config.antispam.spamd_timeout == timedelta(seconds=5)
    for bad, key in [
        ("spamd_max_size: 9MB", "spamd_max_size"),
        ("spamd_failure: drop", "spamd_failure"),
        ("spf_softfail_action: ignore", "spf_softfail_action"),
        ("spam_tag_score: 11", "spam_tag_score"),
    ]:
        with pytest.raises(ConfigError, match=rf"antispam\.{key}"):
            load_config_text(f"server: {{hostname: mx.test}}\nantispam: {{{bad}}}\n")


def test_the_bus_payload_limit_is_the_one_mailbus_runs_nats_with(tmp_path: Path) -> None:
    mib = subjects.BUS_MAX_PAYLOAD // (1024 * 1024)
    embedded = EmbeddedNats(data_dir=tmp_path, port=4222).config_text()
    for text in (
        embedded,
        (ROOT / "deploy/nats/nats-server.conf").read_text(),
        (ROOT / "deploy/k8s/nats.yaml").read_text(),
    ):
        assert f"max_payload: {mib}MB" in text


@pytest.mark.parametrize(
    ("sender", "helo", "found"),
    [
        ("a@sender.test", "x", ("a@sender.test", "sender.test")),
        ("", "client.test", ("postmaster@client.test", "client.test")),
        ("", "", None),
        ("", "[192.0.2.1]", None),
        ("a@[192.0.2.1]", "client.test", None),
        ("a@localhost", "client.test", None),
        ("a@" + "x" * 64 + ".test", "client.test", None),
    ],
)
def test_only_a_multi_label_domain_is_looked_up(
    sender: str, helo: str, found: tuple[str, str] | None
) -> None:
    assert core.spf_identity(sender, helo) == found


def test_received_spf_folds_its_pairs() -> None:
    long = spf("pass").model_copy(update={"helo": "h" * 60 + ".client.test"})
    lines = headers.received_spf(long, "mx.test").split("\r\n")
    assert len(lines) >= 3 and all(line.startswith("\t") for line in lines[1:])
    assert all(len(line) <= 998 for line in lines)
    assert lines[-1].endswith("identity=mailfrom")
