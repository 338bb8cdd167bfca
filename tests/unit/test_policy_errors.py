"""Policy's errors: one root, grouped by meaning, and the replies the unavailable ones answer with.

The endpoint is driven with stand-ins for NATS and the KV stores: a store that
cannot be read must turn into its error's temporary refusal, never into no answer.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any, cast

import pytest

from libs.common.contract.errors import MailbusError
from libs.common.contract.policy import PolicyDecision, PolicyQuery, Session
from services.policy.adapters.facts import FactFinder
from services.policy.adapters.nats_micro import Lookups, PolicyEndpoints
from services.policy.adapters.stores import FailedLoginCounter, GrantStore
from services.policy.core import PolicyRules, SecurityLimits, errors

NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
RULES = PolicyRules.build(
    local_domains=["example.test"],
    pop3_grant=None,
    limits=SecurityLimits(max_auth_failures_per_ip=3),
)


@pytest.mark.parametrize(
    ("error", "group"),
    [
        (errors.AddressError, ValueError),
        (errors.BlockFormatError, errors.RecordFormatError),
        (errors.GrantFormatError, errors.RecordFormatError),
        (errors.CountFormatError, errors.RecordFormatError),
        (errors.LimitsUnavailable, errors.Unavailable),
        (errors.GrantsUnavailable, errors.Unavailable),
        (errors.ContentionError, errors.PolicyError),
    ],
)
def test_every_error_is_a_policy_error_in_its_group(error: type[Exception], group: type) -> None:
    assert issubclass(error, errors.PolicyError) and issubclass(error, group)
    assert issubclass(error, MailbusError)


@pytest.mark.parametrize(
    ("error", "reply", "rule"),
    [
        (
            errors.LimitsUnavailable,
            "451 4.3.0 Limits cannot be checked now, try again later",
            "limits_unavailable",
        ),
        (
            errors.GrantsUnavailable,
            "451 4.3.0 Relay permission cannot be checked now, try again later",
            "pop3_grants_unavailable",
        ),
    ],
)
def test_unavailable_state_defers(error: type[errors.Unavailable], reply: str, rule: str) -> None:
    decision = error.decision
    assert (decision.smtp_reply, decision.rule, decision.action) == (reply, rule, "defer")


class Unreachable:
    """A store whose every read fails, as a KV bucket does while NATS is away."""

    async def get(self, client_ip: str) -> None:
        raise ConnectionError("nats: no servers available")


class Request:
    def __init__(self, query: PolicyQuery) -> None:
        self.headers: dict[str, str] | None = None
        self.data = query.model_dump_json().encode()
        self.answers: list[PolicyDecision] = []

    async def respond(self, data: bytes) -> None:
        self.answers.append(PolicyDecision.model_validate(json.loads(data)))

    async def respond_error(self, code: str, description: str) -> None:
        raise AssertionError(f"service error {code}: {description}")


async def answer(endpoints: PolicyEndpoints, query: PolicyQuery) -> PolicyDecision:
    request = Request(query)
    await endpoints.answer(query.stage, cast(Any, request))
    (decision,) = request.answers
    return decision


def stamped(decision: PolicyDecision) -> PolicyDecision:
    """As policy answers it: with the configuration revision (0, no revision applied yet)."""
    return decision.model_copy(update={"config_revision": 0})


def session(tls: bool = True) -> Session:
    return Session(session_id="s1", client_ip="192.0.2.10", tls=tls)


async def test_unreadable_failed_logins_defer_a_login() -> None:
    failures = cast(FailedLoginCounter, Unreachable())
    endpoints = PolicyEndpoints(
        RULES, lambda: NOW, Lookups(facts=FactFinder(RULES, failures=failures))
    )
    query = PolicyQuery(stage="auth", session=session(), mechanism="PLAIN", username="u@x.test")
    assert await answer(endpoints, query) == stamped(errors.LimitsUnavailable.decision)


async def test_unreadable_grants_defer_a_relay_refusal() -> None:
    rules = PolicyRules.build(local_domains=["example.test"], pop3_grant=timedelta(minutes=10))
    grants = cast(GrantStore, Unreachable())
    endpoints = PolicyEndpoints(rules, lambda: NOW, Lookups(grants=grants))
    relay = PolicyQuery(stage="rcpt", session=session(), rcpt="bob@remote.test")
    assert await answer(endpoints, relay) == stamped(errors.GrantsUnavailable.decision)
    # A local recipient needs no grant: the store is never asked.
    local = PolicyQuery(stage="rcpt", session=session(), rcpt="postmaster@example.test")
    assert (await answer(endpoints, local)).accepted
