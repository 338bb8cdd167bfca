"""Who may relay, who may log in, and POP3-before-SMTP grants: the policy core by tables."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta

import pytest

from libs.common.config import IpGroup, load_config_text
from libs.common.contract.policy import PolicyQuery, Session
from services.policy.core import (
    Account,
    Directory,
    Facts,
    GrantFormatError,
    PolicyRules,
    Pop3Grant,
    decide,
    grant_for_login,
    later,
    parse_path,
    wants_pop3_grant,
)
from services.policy.core.failures import FailedLogins, first_failure
from services.policy.service import rules_from_config

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
GRANT = timedelta(minutes=30)
INSIDE = "10.1.1.1"
OUTSIDE = "192.0.2.1"
PLAIN_POP3 = "pop3-plain"  # a POP3 listener with tls: none
ALICE = Account("alice@example.test", password_hash="$argon2id$...", aliases=("al@example.test",))


def rules(mode: str = "restricted", smtp_auth: bool = True, pop3: bool = True) -> PolicyRules:
    return PolicyRules.build(
        local_domains=["example.test"],
        relay_mode="open" if mode == "open" else "restricted",
        allowed_ip_group=IpGroup(["10.0.0.0/8"]),
        relay_for_authenticated=smtp_auth,
        pop3_grant=GRANT if pop3 else None,
        accounts=[ALICE, Account("bob@example.test")],
        plaintext_login_listeners=[PLAIN_POP3],
    )


def grant(kind: str, ip: str) -> Pop3Grant | None:
    if kind == "none":
        return None
    login = NOW - timedelta(minutes=5) if kind == "valid" else NOW - GRANT - timedelta(seconds=1)
    return grant_for_login(ip, "alice@example.test", login, GRANT)


def rcpt_query(rcpt: str, ip: str = OUTSIDE, auth_user: str | None = None) -> PolicyQuery:
    session = Session(session_id="s", client_ip=ip, auth_user=auth_user, tls=True)
    return PolicyQuery(stage="rcpt", session=session, rcpt=rcpt)


RECIPIENTS = {
    "local-known": "alice@example.test",
    "local-unknown": "nobody@example.test",
    "remote": "carol@remote.test",
}

# A remote recipient in restricted mode, by (inside the group, authenticated, grant):
# the only cell of the matrix where the client matters.
RESTRICTED_REMOTE: dict[tuple[bool, bool, str], tuple[str, str]] = {
    (True, False, "none"): ("250 2.1.5", "allowed_ip_group"),
    (True, False, "valid"): ("250 2.1.5", "allowed_ip_group"),
    (True, False, "expired"): ("250 2.1.5", "allowed_ip_group"),
    (True, True, "none"): ("250 2.1.5", "allowed_ip_group"),
    (True, True, "valid"): ("250 2.1.5", "allowed_ip_group"),
    (True, True, "expired"): ("250 2.1.5", "allowed_ip_group"),
    (False, True, "none"): ("250 2.1.5", "authenticated"),
    (False, True, "valid"): ("250 2.1.5", "authenticated"),
    (False, True, "expired"): ("250 2.1.5", "authenticated"),
    (False, False, "none"): ("554 5.7.1", "relay_denied"),
    (False, False, "valid"): ("250 2.1.5", "pop3_before_smtp"),
    (False, False, "expired"): ("554 5.7.1", "relay_denied"),
}


def expected(mode: str, inside: bool, authed: bool, grant_kind: str, kind: str) -> tuple[str, str]:
    """The reply and rule of one cell of the issue's matrix."""
    if kind == "local-known":
        return "250 2.1.5", "local_user"
    if kind == "local-unknown":
        return "550 5.1.1", "unknown_recipient"
    if mode == "open":
        return "250 2.1.5", "relay_open"
    return RESTRICTED_REMOTE[(inside, authed, grant_kind)]


MATRIX = list(
    itertools.product(
        ("restricted", "open"),
        (True, False),
        (True, False),
        ("none", "valid", "expired"),
        RECIPIENTS,
    )
)


@pytest.mark.parametrize(("mode", "inside", "authed", "grant_kind", "kind"), MATRIX)
def test_relay_matrix(mode: str, inside: bool, authed: bool, grant_kind: str, kind: str) -> None:
    ip = INSIDE if inside else OUTSIDE
    query = rcpt_query(RECIPIENTS[kind], ip, "alice@example.test" if authed else None)
    facts = Facts(pop3_grant=grant(grant_kind, ip))
    decision = decide(query, rules(mode), NOW, facts)
    assert (f"{decision.code} {decision.status}", decision.rule) == expected(
        mode, inside, authed, grant_kind, kind
    )


DENIED = ("554 5.7.1", "relay_denied")
MAPPED_OUTSIDE = "::ffff:192.0.2.1"


@pytest.mark.parametrize(
    ("rules_", "client", "held_by", "authed", "outcome"),
    [
        # relay.smtp_auth off: authenticated is not enough.
        (rules(smtp_auth=False), OUTSIDE, None, True, DENIED),
        # POP3-before-SMTP off: a grant held in KV counts for nothing.
        (rules(pop3=False), OUTSIDE, OUTSIDE, False, DENIED),
        # A grant is for its own address only.
        (rules(), OUTSIDE, "192.0.2.2", False, DENIED),
        # An IPv4 client seen as IPv4-mapped IPv6 is the same client.
        (rules(), MAPPED_OUTSIDE, OUTSIDE, False, ("250 2.1.5", "pop3_before_smtp")),
        (rules(), "::ffff:10.1.1.1", None, False, ("250 2.1.5", "allowed_ip_group")),
    ],
)
def test_relay_edges(
    rules_: PolicyRules, client: str, held_by: str | None, authed: bool, outcome: tuple[str, str]
) -> None:
    user = "alice@example.test" if authed else None
    facts = Facts(pop3_grant=grant("valid", held_by) if held_by else None)
    decision = decide(rcpt_query("carol@remote.test", client, user), rules_, NOW, facts)
    assert (f"{decision.code} {decision.status}", decision.rule) == outcome


def test_grant_lookup_only_for_relay_refusals() -> None:
    denied = decide(rcpt_query("carol@remote.test"), rules(), NOW)
    assert wants_pop3_grant(denied, rules())
    assert not wants_pop3_grant(denied, rules(pop3=False))
    for rcpt in ("alice@example.test", "nobody@example.test", "a%b@example.test"):
        assert not wants_pop3_grant(decide(rcpt_query(rcpt), rules(), NOW), rules())


def test_unknown_reply_names_the_address() -> None:
    decision = decide(rcpt_query("<Nobody@Example.TEST>"), rules(), NOW)
    assert decision.smtp_reply == (
        "550 5.1.1 <Nobody@example.test>: Recipient address rejected: User unknown"
    )


# --- auth ---------------------------------------------------------------------------------


def auth_query(
    username: str = "alice@example.test",
    mechanism: str = "PLAIN",
    tls: bool = True,
    auth_user: str | None = None,
    listener: str = "smtp",
) -> PolicyQuery:
    session = Session(
        session_id="s", client_ip=OUTSIDE, tls=tls, auth_user=auth_user, listener=listener
    )
    return PolicyQuery(
        stage="auth", session=session, mechanism=mechanism, username=username, password="pw"
    )


@pytest.mark.parametrize(
    ("query", "password_ok", "reply", "rule", "canonical"),
    [
        (auth_query(), True, "235 2.7.0", "auth_ok", "alice@example.test"),
        (auth_query("ALICE@Example.TEST"), True, "235 2.7.0", "auth_ok", "alice@example.test"),
        (auth_query(mechanism="login"), True, "235 2.7.0", "auth_ok", "alice@example.test"),
        (auth_query(), False, "535 5.7.8", "auth_failed", None),
        (auth_query("al@example.test"), True, "535 5.7.8", "auth_failed", None),  # alias
        (auth_query("bob@example.test"), True, "535 5.7.8", "auth_failed", None),  # no hash
        (auth_query("nobody@example.test"), True, "535 5.7.8", "auth_failed", None),
        (auth_query("alice"), True, "535 5.7.8", "auth_failed", None),
        (auth_query(""), True, "535 5.7.8", "auth_failed", None),
        (auth_query(tls=False), True, "538 5.7.11", "auth_tls", None),
        (auth_query(tls=False, listener="pop3"), True, "538 5.7.11", "auth_tls", None),
        (auth_query(tls=False, listener=""), True, "538 5.7.11", "auth_tls", None),
        # The operator's tls: none POP3 listener: plain-text logins, checked as any other.
        (auth_query(tls=False, listener=PLAIN_POP3), True, "235 2.7.0", "auth_ok", ALICE.address),
        (auth_query(tls=False, listener=PLAIN_POP3), False, "535 5.7.8", "auth_failed", None),
        (auth_query(tls=True, listener=PLAIN_POP3), True, "235 2.7.0", "auth_ok", ALICE.address),
        (auth_query(mechanism="CRAM-MD5"), True, "504 5.5.4", "auth_mechanism", None),
        (auth_query(auth_user="alice@example.test"), True, "503 5.5.1", "auth_twice", None),
    ],
)
def test_auth(
    query: PolicyQuery, password_ok: bool, reply: str, rule: str, canonical: str | None
) -> None:
    decision = decide(query, rules(), NOW, Facts(password_ok=password_ok))
    assert (f"{decision.code} {decision.status}", decision.rule) == (reply, rule)
    assert decision.canonical == canonical
    assert decision.accepted == (rule == "auth_ok")


def test_auth_without_facts_never_succeeds() -> None:
    assert decide(auth_query(), rules(), NOW).rule == "auth_failed"


def test_only_pop3_listeners_with_tls_none_take_plain_text_logins() -> None:
    config = load_config_text(
        "listeners:\n"
        '  - {name: smtp, address: "127.0.0.1:25", tls: none}\n'
        '  - {name: pop3, protocol: pop3, address: "127.0.0.1:110", tls: starttls}\n'
        '  - {name: pop3-lan, protocol: pop3, address: "127.0.0.1:1110", tls: none}\n'
        "tls: {cert_file: /dev/null, key_file: /dev/null}\n"
    )
    assert rules_from_config(config).plaintext_login_listeners == {"pop3-lan"}


# --- grants, directory, counters ----------------------------------------------------------


def test_grant_expires_exactly_at_its_end() -> None:
    g = grant_for_login("192.0.2.1", "alice@example.test", NOW, GRANT)
    assert g is not None
    assert g.valid_at(NOW) and g.valid_at(NOW + GRANT - timedelta(microseconds=1))
    assert not g.valid_at(NOW + GRANT)


def test_grant_keys_are_canonical_addresses() -> None:
    mapped = grant_for_login("::ffff:192.0.2.1", "u", NOW, GRANT)
    v6 = grant_for_login("[2001:DB8::1]", "u", NOW, GRANT)
    assert mapped is not None and v6 is not None
    assert (mapped.client_ip, v6.client_ip) == ("192.0.2.1", "2001:db8::1")
    assert grant_for_login("not-an-ip", "u", NOW, GRANT) is None


def test_grant_round_trip_and_bad_values() -> None:
    g = grant_for_login("192.0.2.1", "alice@example.test", NOW, GRANT)
    assert g is not None and Pop3Grant.decode(g.encode()) == g
    naive = b'{"client_ip": "x", "user": "u", "granted_at": "2025-01-01T00:00:00", '
    naive += b'"expires_at": "2025-01-01T00:00:00"}'
    for bad in (b"", b"{}", b"[1]", naive):
        with pytest.raises(GrantFormatError):
            Pop3Grant.decode(bad)


def test_an_older_login_never_shortens_a_grant() -> None:
    early = grant_for_login("192.0.2.1", "u", NOW, GRANT)
    late = grant_for_login("192.0.2.1", "u", NOW + timedelta(minutes=1), GRANT)
    assert early is not None and late is not None
    assert later(early, None) and later(late, early)
    assert not later(early, late) and not later(late, late)


def test_directory() -> None:
    d = Directory.build([ALICE, Account("bob@example.test")])
    mailbox = parse_path('"AL"@Example.Test.')
    assert mailbox is not None and d.recipient(mailbox) == "alice@example.test"
    assert d.login("Alice@EXAMPLE.test") == ALICE
    assert d.login("al@example.test") is None  # aliases are no login names
    assert d.login("<alice@example.test") is None
    assert d.login("@x.test:alice@example.test") is None
    assert len(d) == 2


def test_failed_logins_fold() -> None:
    one = first_failure(NOW)
    two = one.after_failure(NOW + timedelta(seconds=5))
    assert (two.count, two.first_at, two.last_at) == (2, NOW, NOW + timedelta(seconds=5))
    assert FailedLogins.decode(two.encode()) == two
    assert FailedLogins.decode(b"garbage") is None
