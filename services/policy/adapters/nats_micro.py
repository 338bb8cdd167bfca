"""The NATS side of policy: one nats.micro endpoint per stage, answering PolicyQuery JSON.

Endpoints use the micro service's default queue group, so every replica of
policy subscribes and each request is answered by exactly one of them. The
adapter translates (JSON in, `decide`, JSON out, with a span that continues
the SMTP session's trace) and gathers the facts only I/O can give: the
client's POP3 grant, and the password check with its failed logins (`logins.py`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from nats.micro.request import Handler, Request
from nats.micro.service import Service as MicroService
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError

from libs.common.contract import subjects
from libs.common.contract.policy import PolicyDecision, PolicyQuery
from libs.common.contract.records import first_error
from libs.common.contract.shadow import ShadowDifference
from libs.common.mail import maillines
from libs.common.runtime import maillog
from libs.common.runtime.metrics import POLICY_DECISION_SECONDS, POLICY_DECISIONS
from libs.common.runtime.telemetry import context_from_headers, tracer
from services.policy.adapters.antispam import AntispamChecks
from services.policy.adapters.facts import FactFinder
from services.policy.adapters.logins import LoginChecker
from services.policy.adapters.passwords import PasswordChecker
from services.policy.adapters.stores import FailedLoginCounter, GrantStore
from services.policy.core import (
    NO_FACTS,
    Facts,
    GrantsUnavailable,
    PolicyRules,
    Pop3Grant,
    Unavailable,
    decide,
    needs,
    wants_pop3_grant,
)
from services.policy.core.shadow import SHADOW_STAGES, compare, union

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

Clock = Callable[[], datetime]
DEFAULT_TIMEOUT_S = 5.0

# The stages whose answer may wait on I/O of seconds: each request is answered in a task.
APART = ("auth", "mail", "data")


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass
class Lookups:
    """Where the facts come from; None leaves that fact at its default (grants nothing)."""

    passwords: PasswordChecker | None = None
    grants: GrantStore | None = None
    failures: FailedLoginCounter | None = None
    facts: FactFinder | None = None
    antispam: AntispamChecks | None = None


class PolicyEndpoints:
    """Answers every policy stage with the rules it was built with."""

    def __init__(
        self,
        rules: PolicyRules,
        clock: Clock = utc_now,
        lookups: Lookups | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self._rules = rules
        self._clock = clock
        self._lookups = lookups or Lookups()
        self._in_flight: set[asyncio.Task[None]] = set()
        # Ingress waits `policy.timeout` for an answer: a login not checked by then is dropped.
        self.logins = LoginChecker(
            rules, clock, self._lookups.passwords, self._lookups.failures, timeout_s
        )
        # The configuration revision of _rules, stamped on every decision.
        self.revision = 0
        # Rules of the shadow revision and its number, decided beside the active ones.
        self.shadow: tuple[PolicyRules, int] | None = None
        # Where a differing shadow decision goes (policy's service publishes it).
        self.record_difference: Callable[[ShadowDifference], None] | None = None

    def use(self, rules: PolicyRules, revision: int) -> None:
        """Answer the next queries with these rules (no await between: no query sees a mix)."""
        self._rules, self.revision = rules, revision
        self.logins._rules = rules

    def antispam(self, checks: AntispamChecks) -> None:
        """A new revision's SPF and spamd settings, for the next queries."""
        self._lookups.antispam = checks

    async def register(self, micro: MicroService) -> None:
        for stage in subjects.POLICY_STAGES:
            await micro.add_endpoint(
                name=stage, subject=subjects.policy_subject(stage), handler=self._handler(stage)
            )
        await micro.add_endpoint(
            name="dryrun", subject=subjects.POLICY_DRYRUN_SUBJECT, handler=self._dry_run
        )

    async def _dry_run(self, request: Request) -> None:
        """`mailbus check`: the decision and its rule, with nothing counted or logged."""
        try:
            query = PolicyQuery.model_validate_json(request.data)
        except ValidationError as exc:
            await request.respond_error("400", f"invalid PolicyQuery: {first_error(exc)}")
            return
        if query.stage == "auth":
            await request.respond_error("400", "no dry run of auth: give session.auth_user")
            return
        rules, revision = self._rules, self.revision
        try:
            decision = await self._decide_stage(query, rules, None, count=False)
        except Unavailable as exc:
            decision = exc.decision
        decision = decision.model_copy(update={"config_revision": revision})
        await request.respond(decision.model_dump_json().encode())

    def _handler(self, stage: str) -> Handler:
        async def handle(request: Request) -> None:
            await self.answer(stage, request)

        async def answer_or_fail(request: Request, arrived: float) -> None:
            try:
                await self.answer(stage, request, arrived)
            except Exception as exc:
                # Out of nats.micro's reach here, so answer the error ourselves:
                # ingress then fails closed at once instead of after its timeout.
                log.exception("policy %s: %s", stage, type(exc).__name__)
                await request.respond_error("500", f"{type(exc).__name__}")

        async def handle_apart(request: Request) -> None:
            # A subscription runs its callback one message at a time: a password check
            # awaited here would make every other login on this replica wait behind it.
            task = asyncio.create_task(answer_or_fail(request, time.monotonic()))
            self._in_flight.add(task)
            task.add_done_callback(self._in_flight.discard)

        # So are SPF's DNS look-ups at MAIL and spamd's scan at DATA.
        return handle_apart if stage in APART else handle

    async def drain(self) -> None:
        """Let the answers still being computed go out."""
        if self._in_flight:
            await asyncio.gather(*self._in_flight, return_exceptions=True)

    async def answer(self, stage: str, request: Request, arrived: float | None = None) -> None:
        parent = context_from_headers(request.headers)
        with _tracer.start_as_current_span(
            f"policy {stage}", context=parent, kind=SpanKind.SERVER
        ) as span:
            span.set_attribute("mailbus.policy.stage", stage)
            query, body = self._parse(stage, request)
            if isinstance(query, str):
                span.set_status(Status(StatusCode.ERROR, query))
                log.warning("policy %s: malformed request: %s", stage, query)
                await request.respond_error("400", query)
                return
            # One revision per query, read once: a swap during its awaits does not mix rules.
            rules, revision = self._rules, self.revision
            arrived = arrived or time.monotonic()
            decision = await self._decide_counted(query, rules, revision, arrived, body)
            span.set_attribute("mailbus.policy.rule", decision.rule)
            span.set_attribute("mailbus.policy.code", decision.code)
            span.set_attribute("mailbus.session.id", query.session.session_id)
            if query.stage == "mail" and query.rcpts:
                span.set_attribute("mailbus.policy.rcpts", len(query.rcpts))
                rcpts = await self._pipelined_rcpts(query, decision, rules, revision, arrived)
                decision = decision.model_copy(update={"rcpts": rcpts})
            await request.respond(decision.model_dump_json().encode())

    async def _decide_counted(
        self,
        query: PolicyQuery,
        rules: PolicyRules,
        revision: int,
        arrived: float,
        body: bytes | None = None,
    ) -> PolicyDecision:
        """One decision with its metrics and its refusal's mail-log line."""
        started = time.perf_counter()
        decision = await self._decide(query, rules, arrived, body)
        decision = decision.model_copy(update={"config_revision": revision})
        POLICY_DECISION_SECONDS.labels(query.stage).observe(time.perf_counter() - started)
        POLICY_DECISIONS.labels(query.stage, decision.action, decision.rule).inc()
        if not decision.accepted:
            self._log_refusal(query, decision)
        return decision

    async def _pipelined_rcpts(
        self,
        mail: PolicyQuery,
        decision: PolicyDecision,
        rules: PolicyRules,
        revision: int,
        arrived: float,
    ) -> tuple[PolicyDecision, ...]:
        """The RCPTs pipelined behind MAIL, decided in order as ingress would ask them one
        by one: with MAIL's canonical sender, the count of recipients accepted so far,
        and nothing after a refused MAIL, a decision that ends the session or the refusal
        that uses up the session's failed commands (ingress would not ask for those)."""
        if not decision.accepted:
            return ()
        sender = decision.canonical if decision.canonical is not None else mail.mail_from
        found: list[PolicyDecision] = []
        accepted = refused = 0
        for rcpt in mail.rcpts:
            query = PolicyQuery(
                stage="rcpt",
                session=mail.session,
                mail_from=sender or "",
                rcpt=rcpt,
                rcpt_count=accepted,
            )
            answer = await self._decide_counted(query, rules, revision, arrived)
            found.append(answer)
            if answer.accepted:
                accepted += 1
            else:
                refused += 1
            if answer.action == "disconnect" or refused == mail.refusals_left:
                break
        return tuple(found)

    async def _facts(
        self, query: PolicyQuery, rules: PolicyRules, shadow: PolicyRules | None = None
    ) -> Facts:
        finder = self._lookups.facts
        if finder is None:
            return NO_FACTS
        wanted = needs(query, rules)
        if shadow is not None:
            wanted = union(wanted, needs(query, shadow))
        return await finder.gather(wanted, query)

    async def _decide(
        self, query: PolicyQuery, rules: PolicyRules, arrived: float, body: bytes | None = None
    ) -> PolicyDecision:
        """A fact that cannot be looked up now defers the query with its error's reply."""
        try:
            if query.stage == "auth":
                facts = await self._facts(query, rules)
                return await self.logins.authenticate(query, facts, arrived)
            return await self._decide_stage(query, rules, body)
        except Unavailable as exc:
            return exc.decision

    async def _decide_stage(
        self, query: PolicyQuery, rules: PolicyRules, body: bytes | None, count: bool = True
    ) -> PolicyDecision:
        # A dry run (count False) records nothing, shadow differences included.
        shadow = self.shadow if count and query.stage in SHADOW_STAGES else None
        facts = await self._facts(query, rules, shadow[0] if shadow else None)
        decision = decide(query, rules, self._clock(), facts)
        if self._lookups.grants is not None and wants_pop3_grant(decision, rules):
            grant = await self._grant(self._lookups.grants, query)
            facts = replace(facts, pop3_grant=grant)
            decision = decide(query, rules, self._clock(), facts)
        if shadow is not None:
            # Before antispam and counting: the shadow differs in rules, not in scanners.
            await self._compare_shadow(query, decision, facts, shadow)
        if self._lookups.antispam is not None:
            decision = await self._lookups.antispam.review(query, decision, self._clock(), body)
        if count and self._lookups.facts is not None:
            decision = await self._lookups.facts.record(query, decision, self._clock())
        return decision

    async def _compare_shadow(
        self,
        query: PolicyQuery,
        active: PolicyDecision,
        facts: Facts,
        shadow: tuple[PolicyRules, int],
    ) -> None:
        """Decide under the shadow rules too; nothing it decides is counted or enforced."""
        rules, revision = shadow
        try:
            if facts.pop3_grant is None and self._lookups.grants is not None:
                probe = decide(query, rules, self._clock(), facts)
                if wants_pop3_grant(probe, rules):
                    grant = await self._grant(self._lookups.grants, query)
                    facts = replace(facts, pop3_grant=grant)
            now = self._clock()
            found = compare(
                query, active, decide(query, rules, now, facts), (self.revision, revision), now
            )
        except Exception as exc:
            # The shadow is an experiment: whatever goes wrong with it, the answer stands.
            log.warning("shadow revision %d: %s: %s", revision, type(exc).__name__, exc)
            return
        if found is not None and self.record_difference is not None:
            self.record_difference(found)

    @staticmethod
    async def _grant(grants: GrantStore, query: PolicyQuery) -> Pop3Grant | None:
        try:
            return await grants.get(query.session.client_ip)
        except Exception as exc:
            log.warning("pop3 grants unreadable: %s: %s", type(exc).__name__, exc)
            raise GrantsUnavailable(str(exc)) from exc

    @staticmethod
    def _parse(stage: str, request: Request) -> tuple[PolicyQuery | str, bytes | None]:
        """The query and the message sent along with it (a DATA query to scan), or the
        reason it cannot be answered (becomes a 400 service error)."""
        carried = (request.headers or {}).get(subjects.POLICY_QUERY_HEADER)
        data = request.data if carried is None else carried.encode()
        body = None if carried is None else request.data
        try:
            query = PolicyQuery.model_validate_json(data)
        except ValidationError as exc:
            return f"invalid PolicyQuery: {first_error(exc)}", None
        if query.stage != stage:
            return f"query for stage {query.stage!r} sent to the {stage!r} endpoint", None
        if body is not None and stage != "data":
            return f"a message sent along with a {stage!r} query", None
        return query, body

    @staticmethod
    def _log_refusal(query: PolicyQuery, decision: PolicyDecision) -> None:
        if query.stage == "auth":
            return  # a failed login has its own line (SASL ... authentication failed)
        session = query.session
        maillog.emit(
            maillines.rejected(
                query.stage,
                session.client_ip,
                decision.smtp_reply,
                query.mail_from,
                query.rcpt,
                session.helo,
                decision.rule,
                session.session_id,
                decision.config_revision,
            )
        )
