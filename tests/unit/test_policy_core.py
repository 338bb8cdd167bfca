"""The policy core, table-driven: address parsing, routing tricks, every stage's rule."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from libs.common.config import IpGroup
from libs.common.contract.policy import PolicyQuery, Session
from services.policy.core import (
    Account,
    AddressError,
    PolicyRules,
    decide,
    parse_path,
    routing_trick,
)
from services.policy.core.address import normalize_domain

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)

ACCOUNTS = [Account("user@example.test"), Account("user@other.test")]
RESTRICTED = PolicyRules.build(
    local_domains=["Example.TEST.", "other.test"],
    relay_mode="restricted",
    allowed_ip_group=IpGroup(["127.0.0.0/8", "10.0.0.0/8", "::1"]),
    allowed_ip_group_name="local_network",
    accounts=ACCOUNTS,
)
NO_GROUP = PolicyRules.build(
    local_domains=["example.test"], allowed_ip_group=None, accounts=ACCOUNTS
)
NO_AUTH_RELAY = PolicyRules.build(local_domains=["example.test"], relay_for_authenticated=False)
OPEN = PolicyRules.build(local_domains=["example.test"], relay_mode="open")

INSIDE = "10.1.2.3"
OUTSIDE = "192.0.2.99"


def query(
    stage: str,
    ip: str = OUTSIDE,
    auth_user: str | None = None,
    fields: dict[str, object] | None = None,
    **kw: object,
) -> PolicyQuery:
    session = Session(session_id="s1", client_ip=ip, auth_user=auth_user)
    return PolicyQuery.model_validate({"stage": stage, "session": session, **(fields or {}), **kw})


# --- address parsing ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "local", "domain", "canonical"),
    [
        ("user@example.test", "user", "example.test", "user@example.test"),
        ("<user@example.test>", "user", "example.test", "user@example.test"),
        ("  <USER@Example.TEST.>  ", "USER", "example.test", "USER@example.test"),
        ("first.last+tag@sub.example.test", "first.last+tag", "sub.example.test", None),
        ('"john doe"@example.test', "john doe", "example.test", '"john doe"@example.test'),
        ('"plain"@example.test', "plain", "example.test", "plain@example.test"),
        ('"a\\"b"@example.test', 'a"b', "example.test", '"a\\"b"@example.test'),
        ("user@[192.0.2.1]", "user", "[192.0.2.1]", None),
        ("user@[IPv6:2001:DB8::0:1]", "user", "[IPv6:2001:db8::1]", None),
        ("josé@bücher.example", "josé", "xn--bcher-kva.example", None),
        ("postmaster", "postmaster", "", "postmaster"),
        ("<Postmaster>", "Postmaster", "", "Postmaster"),
    ],
)
def test_parse_valid(text: str, local: str, domain: str, canonical: str | None) -> None:
    mailbox = parse_path(text)
    assert mailbox is not None
    assert (mailbox.local, mailbox.domain) == (local, domain)
    assert mailbox.address == (canonical or f"{local}@{domain}")


def test_parse_null_path() -> None:
    assert parse_path("<>") is None
    assert parse_path("") is None


@pytest.mark.parametrize(
    "text",
    [
        "<user@example.test",
        "user@example.test>",
        "user",
        "@example.test",
        "user@",
        ".user@example.test",
        "user.@example.test",
        "us..er@example.test",
        "us er@example.test",
        "us(er)@example.test",
        "user@exa mple.test",
        "user@example..test",
        "user@example.test..",
        "user@-example.test",
        "user@example-.test",
        "user@exa_mple.test",
        "user@remote.test@example.test",
        "user@[300.1.1.1]",
        "user@[192.0.2.1",
        '"unterminated@example.test',
        '"quoted"x@example.test',
        '""@example.test',
        "user@example.test\r\nRCPT TO:<x@y.test>",
        "a" * 65 + "@example.test",
        "user@" + "a" * 64 + ".test",
        "user@" + ".".join(["abcdefghi"] * 26),
        "@a.test",
        "@a.test,b.test:user@example.test",
        "@a.test user@example.test",
    ],
)
def test_parse_invalid(text: str) -> None:
    with pytest.raises(AddressError):
        parse_path(text)


@pytest.mark.parametrize(
    ("text", "rule"),
    [
        ("user%remote.test@example.test", "percent_hack"),
        ("remote.test!user@example.test", "bang_path"),
        ("@example.test:user@remote.test", "source_route"),
        ("<@a.test,@b.test:user@remote.test>", "source_route"),
        ("<@[192.0.2.1]:user@remote.test>", "source_route"),
        ('"user@remote.test"@example.test', "nested_address"),
        ('"user%remote.test"@example.test', "percent_hack"),
        ("user@example.test", None),
        ("o'brien+tag@example.test", None),
    ],
)
def test_routing_trick(text: str, rule: str | None) -> None:
    mailbox = parse_path(text)
    assert mailbox is not None
    trick = routing_trick(mailbox)
    assert (trick.rule if trick else None) == rule


def test_source_route_hops_are_kept() -> None:
    mailbox = parse_path("<@A.test,@b.TEST.:user@remote.test>")
    assert mailbox is not None
    assert mailbox.route == ("a.test", "b.test")
    assert mailbox.domain == "remote.test"


@pytest.mark.parametrize(
    ("domain", "normal"),
    [
        ("Example.TEST.", "example.test"),
        ("example.test", "example.test"),
        ("BÜCHER.example", "xn--bcher-kva.example"),
    ],
)
def test_normalize_domain(domain: str, normal: str) -> None:
    assert normalize_domain(domain) == normal


# --- stages -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stage", "kw", "rule", "code", "status"),
    [
        ("connect", {}, "connect_ok", 250, "2.0.0"),
        ("helo", {}, "helo_ok", 250, "2.0.0"),
        ("data", {"size": 100}, "data_ok", 250, "2.0.0"),
        ("auth", {"mechanism": "PLAIN", "username": "a"}, "auth_tls", 538, "5.7.11"),
        ("mail", {"mail_from": "sender@remote.test"}, "mail_ok", 250, "2.1.0"),
        ("mail", {"mail_from": "<>"}, "mail_ok", 250, "2.1.0"),
        ("mail", {"mail_from": ""}, "mail_ok", 250, "2.1.0"),
        ("mail", {"mail_from": "<@relay.test:sender@remote.test>"}, "mail_ok", 250, "2.1.0"),
        ("mail", {"mail_from": "sender%x@remote.test"}, "mail_ok", 250, "2.1.0"),
        ("mail", {"mail_from": "sender@@remote.test"}, "mail_syntax", 501, "5.1.7"),
        ("mail", {"mail_from": "<sender@remote.test"}, "mail_syntax", 501, "5.1.7"),
        ("mail", {"mail_from": "sender"}, "mail_syntax", 501, "5.1.7"),
        ("mail", {"mail_from": "postmaster"}, "mail_syntax", 501, "5.1.7"),
        ("mail", {}, "mail_missing", 501, "5.5.4"),
        ("rcpt", {}, "rcpt_missing", 501, "5.5.4"),
    ],
)
def test_stage_rules(stage: str, kw: dict[str, object], rule: str, code: int, status: str) -> None:
    decision = decide(query(stage, fields=kw), RESTRICTED, NOW)
    assert (decision.rule, decision.code, decision.status) == (rule, code, status)
    assert decision.accepted == (code < 400)


@pytest.mark.parametrize(
    ("rules", "rcpt", "ip", "auth_user", "rule", "reply"),
    [
        # Local domains: from anyone, whatever the case or a trailing root dot.
        (RESTRICTED, "user@example.test", OUTSIDE, None, "local_user", "250 2.1.5"),
        (RESTRICTED, "USER@Example.TEST.", OUTSIDE, None, "local_user", "250 2.1.5"),
        (RESTRICTED, "<user@OTHER.test>", OUTSIDE, None, "local_user", "250 2.1.5"),
        (RESTRICTED, "postmaster", OUTSIDE, None, "postmaster", "250 2.1.5"),
        # Remote domains: only from the allowed group (v4, v6, v4-mapped) or authenticated.
        (RESTRICTED, "user@remote.test", OUTSIDE, None, "relay_denied", "554 5.7.1"),
        (RESTRICTED, "user@remote.test", INSIDE, None, "allowed_ip_group", "250 2.1.5"),
        (RESTRICTED, "user@remote.test", "127.0.0.1", None, "allowed_ip_group", "250 2.1.5"),
        (RESTRICTED, "user@remote.test", "::1", None, "allowed_ip_group", "250 2.1.5"),
        (RESTRICTED, "user@remote.test", "::ffff:10.9.9.9", None, "allowed_ip_group", "250 2.1.5"),
        (RESTRICTED, "user@remote.test", "not-an-ip", None, "relay_denied", "554 5.7.1"),
        (RESTRICTED, "user@remote.test", OUTSIDE, "alice", "authenticated", "250 2.1.5"),
        (NO_AUTH_RELAY, "user@remote.test", OUTSIDE, "alice", "relay_denied", "554 5.7.1"),
        (RESTRICTED, "user@example.test.remote.test", OUTSIDE, None, "relay_denied", "554 5.7.1"),
        (RESTRICTED, "user@sub.example.test", OUTSIDE, None, "relay_denied", "554 5.7.1"),
        (RESTRICTED, "user@[192.0.2.1]", OUTSIDE, None, "relay_denied", "554 5.7.1"),
        (NO_GROUP, "user@remote.test", INSIDE, None, "relay_denied", "554 5.7.1"),
        (NO_GROUP, "user@example.test", INSIDE, None, "local_user", "250 2.1.5"),
        # Open relay: anyone, anywhere.
        (OPEN, "user@remote.test", OUTSIDE, None, "relay_open", "250 2.1.5"),
        # Routing tricks never become local acceptances, not even from the allowed group.
        (RESTRICTED, "user%remote.test@example.test", OUTSIDE, None, "percent_hack", "553 5.1.3"),
        (RESTRICTED, "@example.test:user@remote.test", OUTSIDE, None, "source_route", "553 5.1.3"),
        (
            RESTRICTED,
            "<@example.test:user@example.test>",
            INSIDE,
            None,
            "source_route",
            "553 5.1.3",
        ),
        (RESTRICTED, "remote.test!user@example.test", OUTSIDE, None, "bang_path", "553 5.1.3"),
        (
            RESTRICTED,
            '"user@remote.test"@example.test',
            INSIDE,
            None,
            "nested_address",
            "553 5.1.3",
        ),
        (OPEN, "user%remote.test@example.test", OUTSIDE, None, "percent_hack", "553 5.1.3"),
        # Syntax.
        (RESTRICTED, "<>", INSIDE, None, "rcpt_syntax", "501 5.1.3"),
        (RESTRICTED, "user@@example.test", INSIDE, None, "rcpt_syntax", "501 5.1.3"),
        (RESTRICTED, "user", INSIDE, None, "rcpt_syntax", "501 5.1.3"),
        (RESTRICTED, "user@example..test", INSIDE, None, "rcpt_syntax", "501 5.1.3"),
    ],
)
def test_rcpt_relay_control(
    rules: PolicyRules, rcpt: str, ip: str, auth_user: str | None, rule: str, reply: str
) -> None:
    decision = decide(query("rcpt", ip=ip, auth_user=auth_user, rcpt=rcpt), rules, NOW)
    assert decision.rule == rule
    assert f"{decision.code} {decision.status}" == reply
    assert decision.action == ("accept" if reply.startswith("250") else "reject")


def test_relay_denied_reply_text() -> None:
    decision = decide(query("rcpt", rcpt="user@remote.test"), RESTRICTED, NOW)
    assert decision.smtp_reply == "554 5.7.1 Relay access denied"


def test_accepted_recipient_is_canonical() -> None:
    decision = decide(query("rcpt", rcpt="<USER@Example.TEST.>"), RESTRICTED, NOW)
    assert decision.canonical == "user@example.test"  # the account's own address
    remote = decide(query("rcpt", ip=INSIDE, rcpt="<Bob@Remote.TEST.>"), RESTRICTED, NOW)
    assert remote.canonical == "Bob@remote.test"  # a remote local part keeps its case


@pytest.mark.parametrize("stage", ["connect", "helo", "auth", "mail", "rcpt", "data"])
def test_every_stage_names_a_rule(stage: str) -> None:
    for rules in (RESTRICTED, OPEN, NO_GROUP):
        assert decide(query(stage), rules, NOW).rule
