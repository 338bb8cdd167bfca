"""Revisions without a bus: what changed between two, what waits for a restart, the
all-or-nothing swap, and the shadow policy's comparison and report."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from libs.common.config import Config, ConfigError, load_config_text
from libs.common.config.revisions import LIVE_EFFECTS, Revision, diff, restart_only, summary
from libs.common.contract.events import MessageReceived, parse_event
from libs.common.contract.policy import PolicyDecision, PolicyQuery, Session
from libs.common.contract.shadow import summarise
from libs.common.runtime.liveconfig import Commit, LiveConfig
from services.policy.core import Needs
from services.policy.core.shadow import compare, union
from tests.support.stack import PASSWORD_HASH

GOLDEN = Path(__file__).parent.parent / "golden" / "MessageReceived.v1.json"
AT = datetime(2026, 11, 28, 3, 30, tzinfo=UTC)

BASE = """\
server: {hostname: mx.example.test, local_domains: [example.test]}
listeners:
  - {name: smtp, protocol: smtp, address: '127.0.0.1:2525', tls: none}
  - {name: submission, protocol: smtp, address: '127.0.0.1:2587', tls: none}
ip_groups: {office: [192.0.2.1]}
relay: {allowed_ip_group: office}
users:
  - {address: a@example.test, password_hash: 'HASH'}
"""


def config(text: str = BASE) -> Config:
    return load_config_text(text.replace("HASH", PASSWORD_HASH))


def test_diff_names_each_changed_key_and_nothing_else() -> None:
    new = config(BASE.replace("[192.0.2.1]", "[192.0.2.1, 192.0.2.2]"))
    changes = diff(config(), new)
    assert [c.key for c in changes] == ["ip_groups.office"]
    assert (changes[0].old, changes[0].new) == (["192.0.2.1"], ["192.0.2.1", "192.0.2.2"])
    assert diff(config(), config()) == []


def test_listeners_and_users_are_compared_by_name_not_position() -> None:
    lines = BASE.splitlines(keepends=True)
    swapped = "".join([*lines[:2], lines[3], lines[2], *lines[4:]])
    assert diff(config(), config(swapped)) == []
    moved = BASE.replace("127.0.0.1:2587", "127.0.0.1:2588")
    assert [c.key for c in diff(config(), config(moved))] == ["listeners[submission].address"]


def test_a_diff_never_shows_a_secret() -> None:
    other = config().model_copy()
    text = json.dumps([(c.key, c.old, c.new) for c in diff(None, other)])
    assert PASSWORD_HASH not in text
    assert "users[a@example.test].password_hash" in text


def test_summary_and_what_waits_for_a_restart() -> None:
    changed = BASE.replace("[192.0.2.1]", "[192.0.2.9]").replace("2525", "2526")
    changes = diff(config(), config(changed))
    assert summary(changes) == "listeners[smtp].address, ip_groups.office"
    assert [key for key, _ in restart_only(changes)] == ["listeners[smtp].address"]
    assert summary([]).startswith("no key changed")
    other = "  - {name: other, protocol: smtp, address: '127.0.0.1:2600', tls: none}\n"
    added = BASE.replace("ip_groups:", other + "ip_groups:")
    auth = BASE.replace("2587', tls: none}", "2587', tls: none, require_auth: true}")
    new_listener = diff(config(), config(added))
    assert "listeners[other].address" in [c.key for c in new_listener]
    # Every key of a listener that is not bound yet waits for the restart.
    assert [k for k, _ in restart_only(new_listener)] == [c.key for c in new_listener]
    assert diff(config(), config(auth)) != []
    assert restart_only(diff(config(), config(auth))) == []
    many = diff(config(), config(changed.replace("mx.", "mx2.").replace("2587", "2588")))
    assert summary(many).endswith("(+1 more)")


def test_every_section_says_what_it_does_live() -> None:
    assert set(LIVE_EFFECTS) == set(Config.model_fields)


def test_a_revision_loads_with_check_s_errors_named_after_its_file(tmp_path: Path) -> None:
    record = Revision(
        text="relay: {mode: sometimes}\n",
        source=str(tmp_path / "mailbus.yaml"),
        base_dir=str(tmp_path),
        applied_at=AT,
        applied_by="ops@host",
        action="apply",
    )
    with pytest.raises(ConfigError) as caught:
        record.load()
    assert caught.value.errors[0].startswith(f"{tmp_path / 'mailbus.yaml'}:1: relay.mode:")


def gauge(name: str, service: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"service": service})


def test_a_revision_is_applied_by_every_part_or_by_none() -> None:
    live = LiveConfig("unit-a", "i1", config())
    seen: list[str] = []

    def fine(new: Config, revision: int) -> Commit:
        return lambda: seen.append(f"fine {revision}")

    def fails(new: Config, revision: int) -> Commit:
        if revision == 3:
            raise ValueError("cannot load the certificate")
        return lambda: seen.append(f"fails {revision}")

    live.on_change(fine)
    live.on_change(fails)
    assert live.apply(2, config())
    assert seen == ["fine 2", "fails 2"]
    assert gauge("mailbus_config_revision", "unit-a") == 2
    newer = config(BASE.replace("mx.example", "mx2.example"))
    assert not live.apply(3, newer)
    assert seen == ["fine 2", "fails 2"]  # the part that could prepare did not swap either
    assert (live.revision, live.failed) == (2, 3)
    assert live.config.server.hostname == "mx.example.test"
    assert "certificate" in live.error
    assert gauge("mailbus_config_revision", "unit-a") == 2
    assert gauge("mailbus_config_failed_revision", "unit-a") == 3
    assert live.status()["revision"] == 2


def query() -> PolicyQuery:
    return PolicyQuery(
        stage="mail",
        session=Session(session_id="s1", client_ip="192.0.2.1"),
        mail_from="alice@remote.test",
    )


def test_shadow_records_only_differing_decisions() -> None:
    ok = PolicyDecision.accept("mail_ok")
    limited = PolicyDecision(
        action="defer", code=450, status="4.7.1", message="Too many", rule="max_messages"
    )
    assert compare(query(), ok, ok, (4, 5), AT) is None
    found = compare(query(), ok, limited, (4, 5), AT)
    assert found is not None
    assert (found.active_revision, found.shadow_revision) == (4, 5)
    assert (found.active_rule, found.shadow_rule) == ("mail_ok", "max_messages")
    assert found.shadow_reply == "450 4.7.1 Too many"
    assert found.would_refuse
    back = compare(query(), limited, ok, (4, 5), AT)
    assert back is not None
    report = summarise(5, [found, found, back])
    assert (report.differences, report.would_refuse, report.would_accept) == (3, 2, 1)
    assert report.by_stage == {"mail": 3}
    assert (report.kinds[0].count, report.kinds[0].shadow_rule) == (2, "max_messages")


def test_shadow_facts_are_what_either_side_needs() -> None:
    both = union(Needs(block=True), Needs(messages=True, sender_domain="remote.test"))
    assert both == Needs(block=True, messages=True, sender_domain="remote.test")


def test_events_from_before_revisions_still_decode() -> None:
    golden = json.loads(GOLDEN.read_text())
    assert golden.pop("config_revision") == 7
    event = parse_event(json.dumps(golden))
    assert isinstance(event, MessageReceived)
    assert event.config_revision is None
    decision = PolicyDecision.model_validate_json(
        PolicyDecision.accept("data_ok").model_dump_json()
    )
    assert decision.config_revision is None


def test_logging_level_follows_the_revision_unless_overridden() -> None:
    from libs.common.runtime import service

    root = logging.getLogger()
    before = root.level
    try:
        service._follow_log_level(config(BASE + "logging: {level: error}\n"), 5)()
        assert root.level == logging.ERROR
        service._log_level_override = "debug"
        service._follow_log_level(config(BASE + "logging: {level: warning}\n"), 6)()
        assert root.level == logging.ERROR  # --log-level wins over every revision
    finally:
        service._log_level_override = None
        root.setLevel(before)
