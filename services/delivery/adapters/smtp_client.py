"""One outbound SMTP session with aiosmtplib: open it, run transactions, write down replies.

This module only talks and records what it heard as a `Transcript`; which reply
stands for which recipient is decided in `services.delivery.core.transaction`.
Anything that stops the conversation early becomes a stand-in reply that defers,
so no exception escapes as a lost or bounced recipient. A session may carry
several transactions (several jobs to one destination, one after the other).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import (
    SMTPConnectResponseError,
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from libs.common.contract.events import DeliveryJob, Recipient
from services.delivery.core import dsn
from services.delivery.core.errors import (
    ConnectFailedError,
    ConnectionLostError,
    DeliveryError,
    LoginRefusedError,
    NotAcceptingError,
    PlaintextLoginError,
    ProtocolError,
    TlsFailedError,
    TlsUnavailableError,
)
from services.delivery.core.mx import Endpoint
from services.delivery.core.plan import ENCRYPTED_ONLY, tls_step
from services.delivery.core.replies import Reply
from services.delivery.core.transaction import Transcript

log = logging.getLogger(__name__)

# RFC 5321 section 4.5.3.2 minimum timeouts for commands and the end of DATA.
COMMAND_TIMEOUT_S = 300.0
DATA_TIMEOUT_S = 600.0


@dataclass(frozen=True)
class SessionSettings:
    helo: str
    tls: str  # delivery.tls: opportunistic | required | verify | none
    connect_timeout: float
    # SMTP AUTH (relay host only): the user and password to log in with.
    username: str | None = None
    password: str | None = None
    # delivery.relay_host.auth.allow_plaintext: the password may go out without TLS.
    allow_plaintext: bool = False
    ca_file: str | None = None  # delivery.tls_ca_file, for tls: verify; None: the system's


def _reply(exc: SMTPResponseException) -> Reply:
    return Reply(exc.code, exc.message)


def tls_context(mode: str, ca_file: str | None = None) -> ssl.SSLContext:
    """delivery.tls verify checks the chain (against `ca_file` or the system's CAs) and
    the host name, as Postfix's "secure"; opportunistic and required encrypt without
    checking (Postfix's "may" and "encrypt"): MX certificates rarely match."""
    if mode == "verify":
        return ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca_file)
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _setup_refused(exc: SMTPResponseException, command: str) -> ProtocolError:
    """A refusal of a set-up command: never a reason to bounce, always to retry."""
    return ProtocolError(f"{command}: {exc.code} {exc.message}")


def _stopped(host: str, exc: SMTPException | OSError) -> DeliveryError:
    """What an error of aiosmtplib or the socket means for the conversation."""
    if isinstance(exc, SMTPServerDisconnected | SMTPTimeoutError | OSError):
        what = "timed out" if isinstance(exc, TimeoutError) else f"connection lost ({exc})"
        return ConnectionLostError(f"{host}: {what}")
    return ProtocolError(f"{host}: {exc}")


class SmtpSession:
    def __init__(self, endpoint: Endpoint, settings: SessionSettings) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self.smtp = aiosmtplib.SMTP(
            hostname=endpoint.ip,
            port=endpoint.port,
            local_hostname=settings.helo,
            timeout=COMMAND_TIMEOUT_S,
            start_tls=False,
            validate_certs=False,
        )
        self.tls_version: str | None = None
        self.transactions = 0
        self.healthy = False

    @property
    def label(self) -> str:
        return self.endpoint.label

    @property
    def offers_dsn(self) -> bool:
        """The server's last EHLO (after STARTTLS, if any) offered DSN (RFC 3461)."""
        return self.smtp.supports_extension("dsn")

    async def open(self) -> Reply | None:
        """None once ready for MAIL; else the stand-in reply (and the session is closed)."""
        try:
            await self._open()
        except DeliveryError as exc:
            error = exc
        except (SMTPException, OSError) as exc:
            error = _stopped(self.label, exc)
        else:
            self.healthy = True
            return None
        await self.close()
        return error.reply

    async def _open(self) -> None:
        label = self.label
        try:
            await self.smtp.connect(timeout=self.settings.connect_timeout)
        except SMTPConnectResponseError as exc:
            # A refused greeting: try again later, as Postfix does (the host may recover).
            raise NotAcceptingError(
                f"{label} refused to talk to us: {exc.code} {exc.message}"
            ) from None
        except (SMTPTimeoutError, TimeoutError):
            raise ConnectFailedError(f"connect to {label}: timed out") from None
        except (SMTPException, OSError) as exc:
            raise ConnectFailedError(f"connect to {label}: {exc}") from None
        await self._hello()
        await self._maybe_starttls()
        await self._maybe_login()

    async def _hello(self) -> None:
        try:
            await self.smtp.ehlo()
        except SMTPResponseException:
            try:
                await self.smtp.helo()
            except SMTPResponseException as exc:
                raise _setup_refused(exc, "HELO") from None

    async def _maybe_starttls(self) -> None:
        mode = self.settings.tls
        step = tls_step(mode, self.smtp.supports_extension("starttls"))
        if step == "plain":
            return
        if step == "defer":
            raise TlsUnavailableError(f"TLS is required but {self.label} does not offer STARTTLS")
        try:
            await self.smtp.starttls(
                tls_context=tls_context(mode, self.settings.ca_file),
                server_hostname=self.endpoint.name or self.endpoint.ip,
            )
        except SMTPResponseException as exc:
            if mode in ENCRYPTED_ONLY:
                raise _setup_refused(exc, "STARTTLS") from None
            # Offered but refused: opportunistic TLS carries on in plain text.
            log.info("STARTTLS refused by %s (%s); continuing without TLS", self.label, exc)
            return
        except (ssl.SSLError, SMTPException, OSError, TimeoutError) as exc:
            raise TlsFailedError(f"TLS handshake with {self.label}: {exc}") from None
        ssl_object = self.smtp.get_transport_info("ssl_object")
        self.tls_version = ssl_object.version() if ssl_object is not None else "TLS"
        await self._hello()  # RFC 3207: forget everything learnt before TLS

    async def _maybe_login(self) -> None:
        if self.settings.username is None:
            return
        if self.tls_version is None and not self.settings.allow_plaintext:
            raise PlaintextLoginError(
                f"AUTH at {self.label}: not sending the password without TLS "
                "(delivery.relay_host.auth.allow_plaintext is false)"
            )
        # One mechanism, the strongest both sides know: aiosmtplib's login() would try
        # each in turn and make one wrong password count as several failed logins at
        # the relay host, filling its lockout counters that much faster.
        mechanisms = self.smtp.supported_auth_methods
        if not mechanisms:
            offered = " ".join(self.smtp.server_auth_methods) or "no AUTH"
            raise LoginRefusedError(
                f"AUTH at {self.label}: no mechanism we know is offered ({offered})"
            )
        login = getattr(self.smtp, f"auth_{mechanisms[0].replace('-', '')}")
        try:
            await login(self.settings.username, self.settings.password or "")
        except SMTPResponseException as exc:
            # A wrong password is an operator's fix, not the sender's fault: keep the mail.
            raise LoginRefusedError(
                f"AUTH {mechanisms[0].upper()} at {self.label}: {exc.code} {exc.message}"
            ) from None
        except SMTPException as exc:
            raise LoginRefusedError(f"AUTH at {self.label}: {exc}") from None

    async def transact(self, job: DeliveryJob, body: bytes) -> Transcript:
        """MAIL, one RCPT per recipient, DATA once if anyone was accepted; never raises.
        The DSN parameters go along only to a server that offers DSN."""
        mail: Reply | None = None
        rcpts: list[Reply] = []
        data: Reply | None = None
        broken: Reply | None = None
        try:
            if self.transactions:
                await self.smtp.rset()  # a clean slate after the previous job
            self.transactions += 1
            mail = await self._mail(job)
            if mail.outcome == "succeeded":
                for recipient in job.recipients:
                    rcpts.append(await self._rcpt(recipient))
                if Transcript(mail=mail, rcpts=tuple(rcpts)).needs_data:
                    data = await self._data(body)
        except (SMTPException, OSError) as exc:
            broken = _stopped(self.label, exc).reply
        if broken is not None:
            self.healthy = False
        return Transcript(mail=mail, rcpts=tuple(rcpts), data=data, broken=broken)

    def _refused(self, exc: SMTPResponseException) -> Reply:
        if exc.code == 421:  # the server is closing the session
            self.healthy = False
        return _reply(exc)

    async def _mail(self, job: DeliveryJob) -> Reply:
        options = [f"SIZE={job.size}"] if self.smtp.supports_extension("size") else []
        if self.offers_dsn:
            options += dsn.mail_parameters(job)
        try:
            resp = await self.smtp.mail(job.mail_from, options=options)
        except SMTPResponseException as exc:
            return self._refused(exc)
        return Reply(resp.code, resp.message)

    async def _rcpt(self, recipient: Recipient) -> Reply:
        options = dsn.rcpt_parameters(recipient) if self.offers_dsn else []
        try:
            resp = await self.smtp.rcpt(recipient.address, options=options)
        except SMTPResponseException as exc:
            return self._refused(exc)
        return Reply(resp.code, resp.message)

    async def _data(self, body: bytes) -> Reply:
        try:
            resp = await self.smtp.data(body, timeout=DATA_TIMEOUT_S)
        except SMTPResponseException as exc:
            return _reply(exc)
        return Reply(resp.code, resp.message)

    async def close(self) -> None:
        self.healthy = False
        if not self.smtp.is_connected:
            return
        try:
            await asyncio.wait_for(self.smtp.quit(), timeout=5.0)
        except (SMTPException, OSError, TimeoutError):
            self.smtp.close()
