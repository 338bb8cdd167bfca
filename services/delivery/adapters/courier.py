"""From a job's destination to an SMTP transaction: route, log in, connect, fall back.

- `relay`: the relay host as configured (an IP literal is used as is; a name is
  resolved for its addresses, never looked up as MX), after a POP3 login when
  the relay wants POP3-before-SMTP, with SMTP AUTH when it wants that;
- `mx`: the route from `MxResolver` (MX order, implicit MX, null MX, ...), on
  `delivery.mx_port`, each address in turn while `try_next_address` says so;
- opportunistic TLS whose handshake fails is retried once in plain text;
- a session that is still healthy after a transaction is handed back, so the
  next job to the same destination can reuse it (several MAIL transactions).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import Literal

from libs.common.contract.events import DeliveryJob, Destination
from services.delivery.adapters.dns import MxResolver
from services.delivery.adapters.pop3 import pop3_login
from services.delivery.adapters.smtp_client import SessionSettings, SmtpSession
from services.delivery.core.errors import LoginRefusedError
from services.delivery.core.mx import Endpoint, NoRoute, Route, try_next_address
from services.delivery.core.plan import retry_in_plain_text
from services.delivery.core.replies import Reply
from services.delivery.core.transaction import Transcript

log = logging.getLogger(__name__)

# A POP3 login is reused for this share of the relay host's grant
# (delivery.relay_host.auth.pop3_grant): the session that follows a reuse
# starts well inside the grant, however long its MAIL transaction waits.
POP3_REUSE_SHARE = 0.5


@dataclass(frozen=True)
class RelayTarget:
    host: str
    port: int
    auth_method: Literal["smtp_auth", "pop3_before_smtp"] | None = None  # None = no login
    username: str | None = None
    password: str | None = None
    pop3_port: int = 110
    allow_plaintext: bool = False  # the password may go out without TLS
    pop3_grant_s: float = 60.0  # how long a POP3 login lets us relay


@dataclass(frozen=True)
class CourierSettings:
    helo: str
    tls: str  # delivery.tls: opportunistic | required | verify | none
    connect_timeout: float
    mx_port: int = 25
    relay: RelayTarget | None = None
    ca_file: str | None = None  # delivery.tls_ca_file


@dataclass(frozen=True)
class Attempt:
    transcript: Transcript
    tls_version: str | None = None
    remote_host: str = ""
    endpoint: Endpoint | None = None
    # Whether the server that answered offered DSN; None when none was reached.
    remote_dsn: bool | None = None
    # Seconds spent reaching a server (every address tried) and in the transaction.
    setup_s: float = 0.0
    transfer_s: float = 0.0


class Courier:
    def __init__(self, settings: CourierSettings, resolver: MxResolver | None = None) -> None:
        self.settings = settings
        self._resolver = resolver
        self._pop3_lock = asyncio.Lock()
        self._pop3_at: float | None = None

    async def route(self, destination: Destination) -> Route | NoRoute:
        relay = self.settings.relay
        if destination.kind == "relay":
            if relay is None or not relay.host:
                return NoRoute(Reply(0, "delivery.relay_host.host is not set", "4.3.5"))
            return Route((Endpoint(relay.host, relay.host, relay.port),))
        if destination.kind == "mx" and self._resolver is not None:
            return await self._resolver.route(destination.domain, self.settings.mx_port)
        return NoRoute(Reply(0, f"no route to {destination.kind} destinations", "4.3.0"))

    def _session_settings(self, destination: Destination, plain: bool = False) -> SessionSettings:
        relay = self.settings.relay
        smtp_auth = (
            destination.kind == "relay" and relay is not None and relay.auth_method == "smtp_auth"
        )
        return SessionSettings(
            helo=self.settings.helo,
            tls="none" if plain else self.settings.tls,
            connect_timeout=self.settings.connect_timeout,
            username=relay.username if smtp_auth and relay is not None else None,
            password=relay.password if smtp_auth and relay is not None else None,
            allow_plaintext=relay.allow_plaintext if relay is not None else False,
            ca_file=self.settings.ca_file,
        )

    async def _pop3_before_smtp(self) -> Reply | None:
        relay = self.settings.relay
        if relay is None or relay.auth_method != "pop3_before_smtp":
            return None
        async with self._pop3_lock:
            loop = asyncio.get_running_loop()
            reuse_s = relay.pop3_grant_s * POP3_REUSE_SHARE
            if self._pop3_at is not None and loop.time() - self._pop3_at < reuse_s:
                return None
            refused = await pop3_login(
                relay.host,
                relay.pop3_port,
                relay.username or "",
                relay.password or "",
                self.settings.tls,
                self.settings.connect_timeout,
                allow_plaintext=relay.allow_plaintext,
                ca_file=self.settings.ca_file,
            )
            self._pop3_at = None if refused is not None else loop.time()
            return refused

    async def _open(
        self, destination: Destination, endpoint: Endpoint
    ) -> tuple[SmtpSession | None, Reply | None]:
        if destination.kind == "relay":
            refused = await self._pop3_before_smtp()
            if refused is not None:
                return None, refused
        session = SmtpSession(endpoint, self._session_settings(destination))
        broken = await session.open()
        if retry_in_plain_text(self.settings.tls, broken):
            log.info(
                "delivery: TLS with %s failed (%s); once more in plain text", endpoint.label, broken
            )
            session = SmtpSession(endpoint, self._session_settings(destination, plain=True))
            broken = await session.open()
        return (None, broken) if broken is not None else (session, None)

    async def deliver(
        self,
        job: DeliveryJob,
        route: Route | NoRoute,
        body: bytes,
        reuse: SmtpSession | None = None,
    ) -> tuple[Attempt, SmtpSession | None]:
        """One transaction; returns what happened and a session fit for the next job."""
        destination = job.destination
        if isinstance(route, NoRoute):
            return Attempt(Transcript(broken=route.reply)), reuse
        clock = asyncio.get_running_loop().time
        began = clock()
        if reuse is not None and reuse.healthy:
            transcript = await reuse.transact(job, body)
            if not (try_next_address(transcript) and transcript.mail is None):
                return self._attempt(reuse, transcript, 0.0, clock() - began), await _keep(reuse)
            await reuse.close()  # it went stale between jobs: start over below
        elif reuse is not None:
            await reuse.close()
        last = Attempt(Transcript(broken=Reply(0, "no address to deliver to", "4.4.4")))
        for index, endpoint in enumerate(route.endpoints):
            more = index + 1 < len(route.endpoints)
            session, broken = await self._open(destination, endpoint)
            if session is None:
                assert broken is not None
                last = Attempt(
                    Transcript(broken=broken), None, endpoint.label, endpoint,
                    setup_s=clock() - began,
                )  # fmt: skip
                if destination.kind == "relay" and broken.status == LoginRefusedError.status:
                    break  # our login was refused: no other address will take it
                continue
            opened = clock()
            transcript = await session.transact(job, body)
            last = self._attempt(session, transcript, opened - began, clock() - opened)
            if more and try_next_address(transcript):
                await session.close()
                continue
            return last, await _keep(session)
        return last, None

    @staticmethod
    def _attempt(
        session: SmtpSession, transcript: Transcript, setup_s: float, transfer_s: float
    ) -> Attempt:
        return Attempt(
            transcript,
            session.tls_version,
            session.label,
            session.endpoint,
            session.offers_dsn,
            setup_s,
            transfer_s,
        )


async def _keep(session: SmtpSession) -> SmtpSession | None:
    if session.healthy:
        return session
    await session.close()
    return None
