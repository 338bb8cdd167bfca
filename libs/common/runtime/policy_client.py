"""The typed NATS client of the policy contract (models in contract/policy.py)."""

from __future__ import annotations

import json
import logging

from nats.aio.client import Client as NATS
from nats.errors import MaxPayloadError, NoRespondersError, TimeoutError
from nats.js import JetStreamContext, api

from libs.common.contract import subjects
from libs.common.contract.events import Pop3LoginSucceeded, event_type
from libs.common.contract.policy import POLICY_UNAVAILABLE, PolicyDecision, PolicyQuery
from libs.common.runtime import bus
from libs.common.runtime.telemetry import inject_headers

log = logging.getLogger(__name__)


class PolicyClient:
    """Ask policy over NATS request/reply; never raises for a missing answer."""

    def __init__(self, nc: NATS, timeout: float = 5.0) -> None:
        self._nc = nc
        self._timeout = timeout

    async def ask(
        self, query: PolicyQuery, message: bytes | None = None, extra_timeout: float = 0.0
    ) -> PolicyDecision:
        """`message`: the message itself, sent along with a DATA query for policy to scan
        (as the payload, the query in a header); `extra_timeout`: what that scan may take."""
        subject = subjects.policy_subject(query.stage)
        headers = inject_headers()
        payload = query.model_dump_json().encode()
        if message is not None:
            # JSON's own escapes keep the header one ASCII line whatever the addresses.
            headers[subjects.POLICY_QUERY_HEADER] = json.dumps(query.model_dump(mode="json"))
            payload = message
        try:
            msg = await self._nc.request(
                subject, payload, timeout=self._timeout + extra_timeout, headers=headers
            )
        except (TimeoutError, NoRespondersError) as exc:
            log.warning(
                "policy %s: no answer (%s); failing closed", query.stage, type(exc).__name__
            )
            return POLICY_UNAVAILABLE
        except MaxPayloadError:
            # A nats-server with a smaller max_payload than mailbus's own (8 MiB): the
            # message to scan cannot travel, so nothing is accepted unscanned by accident.
            log.error(
                "policy %s: %d bytes exceed the server's max_payload; lower "
                "antispam.spamd_max_size or raise max_payload",
                query.stage,
                len(payload),
            )
            return POLICY_UNAVAILABLE
        if msg.headers and msg.headers.get("Nats-Service-Error-Code"):
            log.error("policy %s: service error %s", query.stage, msg.headers)
            return POLICY_UNAVAILABLE
        try:
            return PolicyDecision.model_validate_json(msg.data)
        except ValueError:
            log.error("policy %s: malformed answer %r", query.stage, msg.data[:200])
            return POLICY_UNAVAILABLE


async def publish_pop3_login(js: JetStreamContext, event: Pop3LoginSucceeded) -> api.PubAck:
    """Tell policy about a POP3 login (the POP3 listener's side of POP3-before-SMTP).

    Give the event a deterministic id (e.g. from the POP3 session): a retried
    publish is then dropped as a duplicate by JetStream.
    """
    subject = subjects.access_subject(event_type(event))
    return await bus.publish_model(js, subject, event, msg_id=event.event_id)
