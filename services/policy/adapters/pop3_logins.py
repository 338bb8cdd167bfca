"""POP3 logins in, POP3-before-SMTP grants out.

Every policy replica binds the same durable pull consumer, so each login is
turned into a grant by one of them; the grant goes to the shared KV bucket and
the event is acked only after the KV write was acknowledged. Recording is
idempotent (a grant is only ever extended), so a redelivery does no harm.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from nats.aio.msg import Msg
from nats.js import JetStreamContext
from pydantic import ValidationError

from libs.common.contract import subjects
from libs.common.contract.events import Pop3LoginSucceeded, parse_access_event
from libs.common.runtime.consumers import DurableConsumer, FetchSettings, bind, fetch_loop
from services.policy.adapters.stores import GrantStore
from services.policy.core import grant_for_login

log = logging.getLogger(__name__)

RETRY_DELAY_S = 1.0
LOGIN_SUBJECT = subjects.access_subject("Pop3LoginSucceeded")

LOGINS_CONSUMER = DurableConsumer(
    stream=subjects.ACCESS_STREAM,
    name=subjects.POLICY_GRANTS_CONSUMER,
    description="policy: POP3 logins, turned into POP3-before-SMTP grants",
    filters=(LOGIN_SUBJECT,),
    ack_wait=30.0,
)
# One login after the other: logins from one address extend the same grant. A stop
# need not wait for an idle fetch, since a login caught in it only comes back later.
FETCH = FetchSettings(batch=64, concurrent=False, cancel_idle_fetch=True)


class Pop3LoginConsumer:
    def __init__(
        self,
        js: JetStreamContext,
        grants: GrantStore,
        duration: timedelta,
        clock: Callable[[], datetime],
    ) -> None:
        self._js = js
        self._grants = grants
        self._duration = duration
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self._sub: JetStreamContext.PullSubscription | None = None
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        self._sub = await bind(self._js, LOGINS_CONSUMER)
        self._task = asyncio.create_task(
            fetch_loop(self._sub, self._handle, self._stopping, FETCH, "pop3 logins"),
            name="pop3-logins",
        )

    async def stop(self) -> None:
        """Finish the batch in hand; a fetch that is only waiting is cancelled."""
        self._stopping.set()
        task, sub = self._task, self._sub
        if task is None or sub is None:
            return
        await task
        # A pull subscription left behind would hold the connection's drain until it
        # times out; the durable consumer itself stays on the server for the next start.
        await sub.unsubscribe()

    async def _handle(self, msg: Msg) -> None:
        try:
            event = parse_access_event(msg.data)
        except ValidationError as exc:
            log.error("pop3 logins: unreadable event dropped: %s", exc.errors()[:1])
            await msg.term()
            return
        if not isinstance(event, Pop3LoginSucceeded):
            await msg.ack()
            return
        try:
            grant = grant_for_login(event.client_ip, event.user, event.occurred_at, self._duration)
        except ValidationError as exc:
            # A login time without a time zone (no mailbus publisher sends one): no grant
            # could be compared with "now", and a retry would fail the same way.
            log.error("pop3 login %s: no grant made: %s", event.event_id, exc.errors()[:1])
            await msg.term()
            return
        if grant is None:
            log.error("pop3 login %s: client %r is no IP address", event.event_id, event.client_ip)
            await msg.term()
            return
        try:
            written = await self._grants.record(grant, self._clock())
        except Exception as exc:
            log.warning("pop3 login %s: grant not stored (%s); retrying", event.event_id, exc)
            await msg.nak(delay=RETRY_DELAY_S)
            return
        if written:
            log.info(
                "pop3-before-smtp: %s may relay until %s (login of %s)",
                grant.client_ip,
                grant.expires_at.isoformat(),
                grant.user,
            )
        await msg.ack()
