"""The NATS side of policy: one nats.micro endpoint per stage, answering PolicyQuery JSON.

Endpoints use the micro service's default queue group, so every replica of
policy subscribes and each request is answered by exactly one of them. The
adapter only translates: JSON in, `decide`, JSON out, with a span that
continues the SMTP session's trace.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime

from nats.micro.request import Handler, Request
from nats.micro.service import Service as MicroService
from opentelemetry.trace import SpanKind, Status, StatusCode
from pydantic import ValidationError

from libs.common import subjects
from libs.common.policy_api import PolicyDecision, PolicyQuery
from libs.common.telemetry import context_from_headers, tracer
from services.policy.core import PolicyRules, decide

log = logging.getLogger(__name__)
_tracer = tracer(__name__)

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class PolicyEndpoints:
    """Answers every policy stage with the rules it was built with."""

    def __init__(self, rules: PolicyRules, clock: Clock = utc_now) -> None:
        self._rules = rules
        self._clock = clock

    async def register(self, micro: MicroService) -> None:
        for stage in subjects.POLICY_STAGES:
            await micro.add_endpoint(
                name=stage, subject=subjects.policy_subject(stage), handler=self._handler(stage)
            )

    def _handler(self, stage: str) -> Handler:
        async def handle(request: Request) -> None:
            await self.answer(stage, request)

        return handle

    async def answer(self, stage: str, request: Request) -> None:
        parent = context_from_headers(request.headers)
        with _tracer.start_as_current_span(
            f"policy {stage}", context=parent, kind=SpanKind.SERVER
        ) as span:
            span.set_attribute("mailbus.policy.stage", stage)
            query = self._parse(stage, request.data)
            if isinstance(query, str):
                span.set_status(Status(StatusCode.ERROR, query))
                log.warning("policy %s: malformed request: %s", stage, query)
                await request.respond_error("400", query)
                return
            decision = decide(query, self._rules, self._clock())
            span.set_attribute("mailbus.policy.rule", decision.rule)
            span.set_attribute("mailbus.policy.code", decision.code)
            span.set_attribute("mailbus.session.id", query.session.session_id)
            if not decision.accepted:
                self._log_refusal(query, decision)
            await request.respond(decision.model_dump_json().encode())

    @staticmethod
    def _parse(stage: str, data: bytes) -> PolicyQuery | str:
        """The query, or the reason it cannot be answered (becomes a 400 service error)."""
        try:
            query = PolicyQuery.model_validate_json(data)
        except ValidationError as exc:
            first = exc.errors()[0] if exc.errors() else {"msg": str(exc)}
            where = ".".join(str(p) for p in first.get("loc", ()))
            return f"invalid PolicyQuery: {where + ': ' if where else ''}{first['msg']}"
        if query.stage != stage:
            return f"query for stage {query.stage!r} sent to the {stage!r} endpoint"
        return query

    @staticmethod
    def _log_refusal(query: PolicyQuery, decision: PolicyDecision) -> None:
        what = query.rcpt if query.stage == "rcpt" else query.mail_from
        log.info(
            "policy %s refused: rule=%s reply=%r session=%s client=%s%s",
            query.stage,
            decision.rule,
            decision.smtp_reply,
            query.session.session_id,
            query.session.client_ip,
            f" address={what!r}" if what is not None else "",
        )
