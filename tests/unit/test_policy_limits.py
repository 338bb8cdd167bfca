"""The security limits in the policy core: each at its boundary, with and without the exempt group.

No event loop, no network: the facts (counts, blocks, DNS answers, failed
logins) are built by hand, the clock is a parameter.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from libs.common.config import IpGroup
from libs.common.contract.policy import PolicyDecision, PolicyQuery, Session
from services.policy.core import (
    HOUR,
    NO_FACTS,
    Account,
    Block,
    Facts,
    PolicyRules,
    SecurityLimits,
    SenderDomain,
    SlidingCount,
    Window,
    counts_message,
    counts_unknown,
    decide,
    harvest_answer,
    harvest_block,
    needs,
)
from services.policy.core.failures import FailedLogins
from services.policy.core.security import DomainStatus

NOW = datetime(2026, 3, 1, 12, 30, 15, tzinfo=UTC)
CLIENT = "192.0.2.10"
EXEMPT = "198.51.100.7"

LIMITS = SecurityLimits(
    exempt_ip_group=IpGroup(["198.51.100.0/24"]),
    exempt_ip_group_name="trusted",
    max_connections_per_ip=3,
    max_messages_per_hour_per_ip=5,
    max_unknown_recipients=4,
    block_for=timedelta(minutes=30),
    require_sender_domain_dns=True,
    max_recipients=3,
    max_failed_commands=4,
    max_auth_failures_per_ip=4,
    max_message_size=1000,
    max_received_headers=5,
)
RULES = PolicyRules.build(
    local_domains=["example.test"],
    accounts=[Account("alice@example.test")],
    limits=LIMITS,
)
OFF = PolicyRules.build(local_domains=["example.test"], accounts=[Account("alice@example.test")])


def query(stage: str, ip: str = CLIENT, **fields: object) -> PolicyQuery:
    session = Session(session_id="s1", client_ip=ip, tls=True)
    return PolicyQuery.model_validate({"stage": stage, "session": session, **fields})


def answer(q: PolicyQuery, facts: Facts = NO_FACTS, rules: PolicyRules = RULES) -> PolicyDecision:
    return decide(q, rules, NOW, facts)


def reply(d: PolicyDecision) -> str:
    return f"{d.code} {d.status}"


def found(domain: str = "sender.test") -> Facts:
    return Facts(sender_domain=SenderDomain(domain, "found"))


def messages(n: int, at: datetime = NOW) -> SlidingCount:
    count = SlidingCount()
    for _ in range(n):
        count = count.add(HOUR, at)
    return count


# --- max_connections_per_ip: the count includes the asking connection ---------------------


@pytest.mark.parametrize(
    ("ip", "connections", "expected"),
    [
        (CLIENT, 3, "250 2.0.0"),  # the third connection: last allowed
        (CLIENT, 4, "421 4.7.0"),  # the fourth: first refused
        (EXEMPT, 50, "250 2.0.0"),
        ("::ffff:198.51.100.7", 50, "250 2.0.0"),  # mapped IPv4 is the same client
    ],
)
def test_connections(ip: str, connections: int, expected: str) -> None:
    decision = answer(query("connect", ip), Facts(connections=connections))
    assert reply(decision) == expected
    if not decision.accepted:
        assert (decision.action, decision.rule) == ("disconnect", "max_connections_per_ip")


def test_connect_hands_ingress_its_session_limits() -> None:
    normal = answer(query("connect"), Facts(connections=1)).limits
    assert normal is not None
    assert (normal.max_message_size, normal.max_failed_commands, normal.exempt) == (1000, 4, False)
    exempt = answer(query("connect", EXEMPT))
    assert exempt.rule == "exempt_ip_group"
    assert exempt.limits is not None
    assert (exempt.limits.max_message_size, exempt.limits.max_failed_commands) == (0, 0)
    assert exempt.limits.exempt


# --- max_messages_per_hour_per_ip: refused at MAIL with 450 4.7.1 -------------------------


@pytest.mark.parametrize(
    ("ip", "sent", "expected"),
    [
        (CLIENT, 4, "250 2.1.0"),  # the fifth message may start
        (CLIENT, 5, "450 4.7.1"),  # the sixth may not
        (EXEMPT, 500, "250 2.1.0"),
    ],
)
def test_messages_per_hour(ip: str, sent: int, expected: str) -> None:
    facts = Facts(messages=messages(sent), sender_domain=SenderDomain("sender.test", "found"))
    decision = answer(query("mail", ip, mail_from="a@sender.test"), facts)
    assert reply(decision) == expected
    if not decision.accepted:
        assert decision.rule == "max_messages_per_hour_per_ip"
        assert "try again after 13:31 UTC" in decision.message


def test_messages_leave_the_window_after_an_hour() -> None:
    sent_at = NOW - timedelta(minutes=59)
    count = messages(5, sent_at)
    assert count.total(HOUR, NOW) == 5
    # Counted until an hour after the end of their minute: never less than an exact hour.
    slot_end = HOUR.slot_end(HOUR.slot_of(sent_at))
    assert count.total(HOUR, slot_end + timedelta(hours=1) - timedelta(seconds=1)) == 5
    assert count.total(HOUR, slot_end + timedelta(hours=1)) == 0
    assert count.below_at(HOUR, NOW, 5) == slot_end + timedelta(hours=1)


def test_sliding_count_prunes_and_round_trips() -> None:
    old = messages(3, NOW - timedelta(hours=2))
    newer = old.add(HOUR, NOW)
    assert newer.slots == {HOUR.slot_of(NOW): 1}
    assert SlidingCount.decode(newer.encode()) == newer
    short = Window(length=timedelta(minutes=10), slot=timedelta(minutes=1))
    later = NOW + timedelta(minutes=9)
    assert messages(2).add(short, later).total(short, later) == 3
    # Twelve minutes on, the first two (their minute ended at 12:31) are past 10 minutes.
    latest = NOW + timedelta(minutes=12)
    assert messages(2).add(short, latest).total(short, latest) == 1


@pytest.mark.parametrize(
    ("ip", "stage", "accepted", "counted"),
    [
        (CLIENT, "data", True, True),
        (CLIENT, "data", False, False),  # a refused message does not count
        (EXEMPT, "data", True, False),
        (CLIENT, "mail", True, False),  # counted once accepted, not when it starts
    ],
)
def test_which_messages_count(ip: str, stage: str, accepted: bool, counted: bool) -> None:
    decision = PolicyDecision.accept("data_ok")
    if not accepted:
        decision = PolicyDecision(action="reject", code=554, status="5.4.6", message="", rule="x")
    assert counts_message(query(stage, ip), decision, LIMITS) is counted
    assert not counts_message(query(stage, ip), decision, SecurityLimits())


# --- directory harvest --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "unknown", "blocks"),
    [(CLIENT, 3, False), (CLIENT, 4, True), (CLIENT, 9, True), (EXEMPT, 40, False)],
)
def test_harvest_blocks_at_the_limit(ip: str, unknown: int, blocks: bool) -> None:
    block = harvest_block(ip, unknown, LIMITS, NOW)
    assert (block is not None) is blocks
    if block is not None:
        assert (block.start, block.end, block.rule) == (
            NOW,
            NOW + timedelta(minutes=30),
            "directory_harvest",
        )
        assert Block.decode(block.encode()) == block


def test_only_unknown_local_recipients_count() -> None:
    unknown = answer(query("rcpt", rcpt="nobody@example.test", rcpt_count=0))
    assert (reply(unknown), unknown.rule) == ("550 5.1.1", "unknown_recipient")
    assert counts_unknown(query("rcpt"), unknown, LIMITS)
    assert not counts_unknown(query("rcpt", EXEMPT), unknown, LIMITS)
    assert not counts_unknown(query("rcpt"), unknown, SecurityLimits())
    known = answer(query("rcpt", rcpt="alice@example.test"))
    relay = answer(query("rcpt", rcpt="bob@remote.test"))
    assert not counts_unknown(query("rcpt"), known, LIMITS)
    assert not counts_unknown(query("rcpt"), relay, LIMITS)


BLOCK = Block(
    client_ip=CLIENT,
    reason="4 unknown local recipients",
    rule="directory_harvest",
    start=NOW,
    end=NOW + timedelta(hours=1),
)


@pytest.mark.parametrize(
    ("stage", "ip", "at", "expected"),
    [
        ("connect", CLIENT, NOW, "421 4.7.0"),
        ("connect", CLIENT, NOW + timedelta(minutes=59, seconds=59), "421 4.7.0"),
        ("connect", CLIENT, NOW + timedelta(hours=1), "250 2.0.0"),  # the block has ended
        ("connect", EXEMPT, NOW, "250 2.0.0"),
        ("mail", CLIENT, NOW, "421 4.7.0"),  # sessions open before the block end at MAIL
    ],
)
def test_a_block_refuses_connections_until_it_ends(
    stage: str, ip: str, at: datetime, expected: str
) -> None:
    block = (
        BLOCK
        if ip == CLIENT
        else Block(
            client_ip=ip,
            reason="x",
            rule="directory_harvest",
            start=NOW,
            end=NOW + timedelta(hours=1),
        )
    )
    facts = Facts(block=block, sender_domain=SenderDomain("sender.test", "found"))
    decision = decide(query(stage, ip, mail_from="a@sender.test"), RULES, at, facts)
    assert reply(decision) == expected
    if not decision.accepted:
        assert (decision.action, decision.rule) == ("disconnect", "directory_harvest")
        assert "blocked until 2026-03-01 13:30:15 UTC" in decision.message


def test_a_block_of_another_address_blocks_nothing() -> None:
    other = Block(
        client_ip="192.0.2.99",
        reason="x",
        rule="directory_harvest",
        start=NOW,
        end=NOW + timedelta(hours=1),
    )
    assert answer(query("connect"), Facts(block=other)).accepted


# --- require_sender_domain_dns ------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "status", "expected", "rule"),
    [
        (CLIENT, "found", "250 2.1.0", "mail_ok"),
        (CLIENT, "missing", "550 5.1.8", "require_sender_domain_dns"),
        (CLIENT, "null_mx", "550 5.7.27", "require_sender_domain_dns"),
        (CLIENT, "temporary", "451 4.4.3", "sender_domain_dns_tempfail"),
        (EXEMPT, "missing", "250 2.1.0", "mail_ok"),
    ],
)
def test_sender_domain(ip: str, status: DomainStatus, expected: str, rule: str) -> None:
    facts = Facts(sender_domain=SenderDomain("sender.test", status))
    decision = answer(query("mail", ip, mail_from="<a@Sender.TEST.>"), facts)
    assert (reply(decision), decision.rule) == (expected, rule)


def test_sender_domain_not_looked_up_is_a_temporary_failure() -> None:
    decision = answer(query("mail", mail_from="a@sender.test"), Facts())
    assert reply(decision) == "451 4.4.3"


@pytest.mark.parametrize(
    ("mail_from", "domain"),
    [
        ("<>", None),  # the null sender is always allowed
        ("a@[192.0.2.1]", None),  # an address literal has no DNS to ask
        ("a@Sender.TEST.", "sender.test"),
        ("not an address", None),  # refused for its syntax
    ],
)
def test_what_is_looked_up(mail_from: str, domain: str | None) -> None:
    assert needs(query("mail", mail_from=mail_from), RULES).sender_domain == domain
    assert needs(query("mail", EXEMPT, mail_from=mail_from), RULES).sender_domain is None
    assert needs(query("mail", mail_from=mail_from), OFF).sender_domain is None


def test_local_domains_need_no_sender_dns() -> None:
    """example.test is the server's own: no public DNS is needed for alice to send."""
    q = query("mail", mail_from="alice@Example.TEST")
    assert needs(q, RULES).sender_domain is None
    assert answer(q, Facts()).accepted  # without any DNS answer, not 451 4.4.3


def test_null_sender_needs_no_dns() -> None:
    assert answer(query("mail", mail_from="<>")).accepted


def test_needs_per_stage() -> None:
    connect = needs(query("connect"), RULES)
    assert (connect.block, connect.connections) == (True, True)
    assert needs(query("auth"), RULES).failed_logins
    assert needs(query("connect", EXEMPT), RULES) == needs(query("rcpt"), RULES)
    assert not needs(query("connect"), OFF).connections


# --- max_recipients -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ip", "already", "expected"),
    [(CLIENT, 2, "250 2.1.5"), (CLIENT, 3, "452 4.5.3"), (EXEMPT, 30, "250 2.1.5")],
)
def test_max_recipients(ip: str, already: int, expected: str) -> None:
    decision = answer(query("rcpt", ip, rcpt="alice@example.test", rcpt_count=already))
    assert reply(decision) == expected
    if not decision.accepted:
        assert decision.rule == "max_recipients"


# --- max_message_size (SIZE= at MAIL; ingress enforces DATA itself) -----------------------


@pytest.mark.parametrize(
    ("ip", "size", "expected"),
    [(CLIENT, 1000, "250 2.1.0"), (CLIENT, 1001, "552 5.3.4"), (EXEMPT, 10**9, "250 2.1.0")],
)
def test_size_at_mail(ip: str, size: int, expected: str) -> None:
    decision = answer(query("mail", ip, mail_from="a@sender.test", size=size), found())
    assert reply(decision) == expected


# --- max_received_headers: a loop is refused even from the exempt group -------------------


@pytest.mark.parametrize(
    ("ip", "hops", "expected"),
    [(CLIENT, 5, "250 2.0.0"), (CLIENT, 6, "554 5.4.6"), (EXEMPT, 6, "554 5.4.6")],
)
def test_received_headers(ip: str, hops: int, expected: str) -> None:
    decision = answer(query("data", ip, received_headers=hops, size=10))
    assert reply(decision) == expected
    if not decision.accepted:
        assert decision.rule == "max_received_headers"


# --- failed logins from one address: AUTH refused with 454 4.7.0 --------------------------


def failures(count: int, last_at: datetime = NOW) -> FailedLogins:
    return FailedLogins(count=count, first_at=last_at - timedelta(minutes=5), last_at=last_at)


@pytest.mark.parametrize(
    ("ip", "failed", "expected"),
    [
        (CLIENT, failures(3), "535 5.7.8"),  # wrong password: refused, and one more failure
        (CLIENT, failures(4), "454 4.7.0"),  # at the limit: not even checked
        (CLIENT, failures(4, NOW - timedelta(hours=1)), "535 5.7.8"),  # the hour has passed
        (EXEMPT, failures(40), "535 5.7.8"),
    ],
)
def test_failed_logins(ip: str, failed: FailedLogins, expected: str) -> None:
    q = query("auth", ip, mechanism="PLAIN", username="alice@example.test", password="x")
    decision = answer(q, Facts(failed_logins=failed))
    assert reply(decision) == expected
    if decision.code == 454:
        assert decision.rule == "auth_failures"


def test_limits_off_by_default() -> None:
    assert answer(query("connect"), Facts(connections=10**6), OFF).accepted
    assert answer(query("mail", mail_from="a@nowhere.test", size=10**12), Facts(), OFF).accepted
    assert answer(query("rcpt", rcpt="alice@example.test", rcpt_count=10**6), Facts(), OFF).accepted
    assert answer(query("data", received_headers=500), Facts(), OFF).accepted


def test_the_unknown_recipient_that_starts_a_block_is_told_so() -> None:
    unknown = answer(query("rcpt", rcpt="nobody@example.test"))
    assert reply(unknown) == "550 5.1.1"
    told = harvest_answer(unknown)
    assert (reply(told), told.message) == ("550 5.1.1", unknown.message)
    assert told.action == "disconnect" and told.rule == "directory_harvest"
