"""Every address form a client may try at RCPT, and the reply it gets (docs/addresses.md).

The argument goes through ingress's path splitter and then policy's RFC 5321
parser and rules, as it does on the wire; tests/integration/test_relay_control.py
sends the same table over real SMTP sessions.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest

from libs.common.config import IpGroup
from libs.common.contract.policy import PolicyQuery, Session
from services.ingress.core.paths import split_path
from services.policy.core import Account, PolicyRules, decide

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
DOC = Path(__file__).resolve().parents[2] / "docs" / "addresses.md"

RULES = PolicyRules.build(
    local_domains=["example.test"],
    allowed_ip_group=IpGroup(["10.0.0.0/8"]),
    accounts=[Account("alice@example.test", aliases=("a.liddell@example.test",))],
    postmaster="alice@example.test",
)

OK = "250 2.1.5"
RELAY = "554 5.7.1"
UNKNOWN = "550 5.1.1"
ROUTING = "553 5.1.3"
SYNTAX = "501 5.1.3"


@dataclass(frozen=True)
class Form:
    what: str
    rcpt: str  # the RCPT TO: argument exactly as sent
    outside: str  # reply to a client outside relay.allowed_ip_group, not authenticated
    inside: str  # reply to a client inside the group
    canonical: str | None = None  # where accepted mail goes


FORMS: list[Form] = [
    # Local recipients: known accounts and aliases, whatever the spelling of the same mailbox.
    Form("account", "<alice@example.test>", OK, OK, "alice@example.test"),
    Form("upper-case local part", "<ALICE@example.test>", OK, OK, "alice@example.test"),
    Form("mixed-case domain", "<alice@Example.TEST>", OK, OK, "alice@example.test"),
    Form("one trailing root dot", "<alice@example.test.>", OK, OK, "alice@example.test"),
    Form("quoted plain local part", '<"alice"@example.test>', OK, OK, "alice@example.test"),
    Form("quoted-pair in local part", '<"al\\ice"@example.test>', OK, OK, "alice@example.test"),
    Form("no angle brackets", "alice@example.test", OK, OK, "alice@example.test"),
    Form("alias", "<a.liddell@example.test>", OK, OK, "alice@example.test"),
    Form("alias, other case", "<A.Liddell@EXAMPLE.test>", OK, OK, "alice@example.test"),
    Form("postmaster@local domain", "<Postmaster@example.test>", OK, OK, "alice@example.test"),
    Form("bare postmaster", "<postmaster>", OK, OK, "alice@example.test"),
    Form("unknown local user", "<nobody@example.test>", UNKNOWN, UNKNOWN),
    Form("quoted local part with space", '<"alice smith"@example.test>', UNKNOWN, UNKNOWN),
    Form("UTF-8 local part", "<álice@example.test>", UNKNOWN, UNKNOWN),
    # Remote recipients: relay rules apply; nothing that merely resembles a local domain is one.
    Form("remote", "<bob@remote.test>", RELAY, OK, "bob@remote.test"),
    Form("remote, mixed case, root dot", "<Bob@Remote.TEST.>", RELAY, OK, "Bob@remote.test"),
    Form("subdomain of a local domain", "<alice@sub.example.test>", RELAY, OK),
    Form("local domain as a prefix", "<alice@example.test.remote.test>", RELAY, OK),
    Form("local domain inside a label", "<alice@remote-example.test>", RELAY, OK),
    Form("IDN domain", "<bob@bücher.example>", RELAY, OK, "bob@xn--bcher-kva.example"),
    Form("IPv4 address literal", "<alice@[127.0.0.1]>", RELAY, OK, "alice@[127.0.0.1]"),
    Form("IPv6 address literal", "<alice@[IPv6:0::1]>", RELAY, OK, "alice@[IPv6:::1]"),
    # Sender-specified routing: refused from everyone, even clients that may relay.
    Form("% hack", "<bob%remote.test@example.test>", ROUTING, ROUTING),
    Form("% hack, quoted", '<"bob%remote.test"@example.test>', ROUTING, ROUTING),
    Form("! bang path", "<remote.test!bob@example.test>", ROUTING, ROUTING),
    Form("source route, remote end", "<@example.test:bob@remote.test>", ROUTING, ROUTING),
    Form("source route, local end", "<@remote.test:alice@example.test>", ROUTING, ROUTING),
    Form("source route, two hops", "<@a.test,@b.test:bob@remote.test>", ROUTING, ROUTING),
    Form("quoted local part with @", '<"bob@remote.test"@example.test>', ROUTING, ROUTING),
    # Not an RFC 5321 path.
    Form("two @", "<bob@remote.test@example.test>", SYNTAX, SYNTAX),
    Form("two trailing dots", "<alice@example.test..>", SYNTAX, SYNTAX),
    Form("no domain", "<alice>", SYNTAX, SYNTAX),
    Form("empty domain", "<alice@>", SYNTAX, SYNTAX),
    Form("null path", "<>", SYNTAX, SYNTAX),
    Form("unclosed bracket", "<alice@example.test", SYNTAX, SYNTAX),
    Form("text glued after the bracket", "<alice@example.test>x", SYNTAX, SYNTAX),
    Form("comment", "<alice(x)@example.test>", SYNTAX, SYNTAX),
    Form("space before @", "<alice @example.test>", SYNTAX, SYNTAX),
    Form("leading dot", "<.alice@example.test>", SYNTAX, SYNTAX),
    Form("two dots in a row", "<a..b@example.test>", SYNTAX, SYNTAX),
    Form("quoted strings joined by dots", '<"a"."b"@example.test>', SYNTAX, SYNTAX),
    Form("underscore in the domain", "<alice@exa_mple.test>", SYNTAX, SYNTAX),
    Form("invalid address literal", "<alice@[300.1.1.1]>", SYNTAX, SYNTAX),
    Form("local part over 64 octets", "<" + "a" * 65 + "@example.test>", SYNTAX, SYNTAX),
]


def rcpt_decision(form: Form, client_ip: str) -> tuple[str, str | None]:
    path, params = split_path(form.rcpt)
    assert params == ""
    query = PolicyQuery(
        stage="rcpt", session=Session(session_id="s", client_ip=client_ip), rcpt=path
    )
    decision = decide(query, RULES, NOW)
    return f"{decision.code} {decision.status}", decision.canonical


@pytest.mark.parametrize("form", FORMS, ids=lambda f: f.what)
def test_address_form(form: Form) -> None:
    outside, canonical = rcpt_decision(form, "192.0.2.1")
    inside, inside_canonical = rcpt_decision(form, "10.0.0.1")
    assert (outside, inside) == (form.outside, form.inside)
    if form.canonical is not None:
        accepted = canonical if outside == OK else inside_canonical
        assert accepted == form.canonical


def markdown_table() -> str:
    """The table of docs/addresses.md: `python -m tests.unit.test_policy_addresses`."""
    lines = [
        "| form | RCPT TO: | outside the group | inside the group | delivered to |",
        "|---|---|---|---|---|",
    ]
    for f in FORMS:
        rcpt = f.rcpt.replace("|", "\\|")
        lines.append(f"| {f.what} | `{rcpt}` | {f.outside} | {f.inside} | {f.canonical or ''} |")
    return "\n".join(lines) + "\n"


def test_the_note_lists_every_form() -> None:
    assert markdown_table() in DOC.read_text(encoding="utf-8")


if __name__ == "__main__":
    print(markdown_table(), end="")
