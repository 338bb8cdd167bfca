"""AUTH under a flood of wrong passwords: two policy replicas on a real nats-server.

Logins are asked of policy over the bus as ingress asks them (request/reply on
the auth stage, `policy.timeout` to answer). The limits must hold however
many attempts arrive at once and whichever replica answers them:

- at most `max_auth_failures_per_ip` password checks per address, across replicas;
- a correct login gives its reserved failure back;
- a login from another address is answered, and succeeds, while a flood is on.
"""

from __future__ import annotations

import asyncio
import functools
import uuid
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from argon2 import PasswordHasher, Type

from libs.common.contract import subjects
from libs.common.contract.policy import PolicyDecision, PolicyQuery, Session
from services.policy.service import PolicyService
from tests.support.stack import PASSWORD, PASSWORD_HASH, Stack, failed_logins, running_stack
from tests.support.streams import eventually

pytestmark = pytest.mark.asyncio(loop_scope="module")

LIMIT = 5
TIMEOUT_S = 5.0
# A second account whose hash costs tens of milliseconds a check, as a production one
# does: a flood of checks against it is what fills policy's queue.
COSTLY_PASSWORD = "a costly secret"
COSTLY_HASH = PasswordHasher(time_cost=2, memory_cost=16384, parallelism=1, type=Type.ID).hash(
    COSTLY_PASSWORD
)


def config_text(sink_port: int) -> str:
    return f"""
server: {{hostname: mx.example.test, local_domains: [example.test]}}
users:
  - {{address: alice@example.test, password_hash: "{PASSWORD_HASH}"}}
  - {{address: carol@example.test, password_hash: "{COSTLY_HASH}"}}
security: {{max_auth_failures_per_ip: {LIMIT}, require_sender_domain_dns: false}}
policy: {{timeout: {TIMEOUT_S:g}s}}
"""


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def stack(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Stack]:
    tmp: Path = tmp_path_factory.mktemp("auth-flood")
    async with running_stack(tmp, config_text, ["policy", "policy"]) as running:
        yield running


async def login(
    stack: Stack, ip: str, password: str, user: str = "alice@example.test"
) -> PolicyDecision | None:
    """Policy's answer, or None when none came within policy.timeout (ingress: 451)."""
    query = PolicyQuery(
        stage="auth",
        session=Session(session_id=uuid.uuid4().hex, client_ip=ip, listener="smtp", tls=True),
        mechanism="PLAIN",
        username=user,
        password=password,
    )
    try:
        msg = await stack.nc.request(
            subjects.policy_subject("auth"), query.model_dump_json().encode(), timeout=TIMEOUT_S
        )
    except TimeoutError:
        return None
    return PolicyDecision.model_validate_json(msg.data)


def replies(decisions: list[PolicyDecision | None]) -> Counter[str]:
    return Counter("none" if d is None else f"{d.code} {d.rule}" for d in decisions)


async def has_failed(stack: Stack, ip: str) -> bool:
    return await failed_logins(stack.js, ip) > 0


def checks_run(stack: Stack) -> int:
    """Password checks policy's replicas ran (dropped ones not included)."""
    total = 0
    for running in stack.running:
        assert isinstance(running.service, PolicyService)
        total += running.service.passwords.ran
    return total


async def test_concurrent_wrong_logins_stop_at_the_limit(stack: Stack) -> None:
    ip = "192.0.2.10"
    before = checks_run(stack)
    answers = await asyncio.gather(*(login(stack, ip, "wrong") for _ in range(40)))
    counted = replies(list(answers))
    assert counted["535 auth_failed"] == LIMIT, counted
    assert counted["454 auth_failures"] == 40 - LIMIT, counted
    assert checks_run(stack) - before == LIMIT
    assert await failed_logins(stack.js, ip) == LIMIT
    # Locked for the rest of the hour: even the right password is not checked.
    locked = await login(stack, ip, PASSWORD)
    assert locked is not None and (locked.code, locked.rule) == (454, "auth_failures")


async def test_a_correct_login_gives_its_reservation_back(stack: Stack) -> None:
    ip = "192.0.2.11"
    for _ in range(LIMIT - 1):
        wrong = await login(stack, ip, "wrong")
        assert wrong is not None and wrong.code == 535
    for _ in range(3):  # each reserves a failure and gives it back
        right = await login(stack, ip, PASSWORD)
        assert right is not None and right.code == 235, right
    assert await failed_logins(stack.js, ip) == LIMIT - 1


async def test_a_login_from_elsewhere_succeeds_during_a_flood(stack: Stack) -> None:
    flooders = [f"198.51.100.{n}" for n in range(1, 16)]

    async def flood(ip: str) -> list[PolicyDecision | None]:
        got = []
        for _ in range(3 * LIMIT):
            got.append(await login(stack, ip, "wrong", user="carol@example.test"))
        return got

    attackers = [asyncio.create_task(flood(ip)) for ip in flooders for _ in range(4)]
    # Once every flooder has failed, its checks queue behind a login with no failures.
    for ip in flooders:
        await eventually(functools.partial(has_failed, stack, ip), f"a failure from {ip}")
    legit = []
    for _ in range(5):
        legit.append(await login(stack, "203.0.113.5", COSTLY_PASSWORD, user="carol@example.test"))
    flooded = [d for task in attackers for d in await task]
    assert replies(legit) == Counter({"235 auth_ok": 5}), replies(flooded)
    # No address got more than its limit of checks, whichever replica answered.
    for ip in flooders:
        assert await failed_logins(stack.js, ip) <= LIMIT
    assert replies(flooded)["535 auth_failed"] <= LIMIT * len(flooders)
