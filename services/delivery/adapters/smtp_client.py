"""One outbound SMTP transaction with aiosmtplib, recorded as a `Transcript`.

This module only talks and writes down what it heard; which reply stands for
which recipient is decided in `services.delivery.core.transaction`. Anything
that stops the conversation early becomes a stand-in reply (`Transcript.broken`)
that defers, so no exception escapes as a lost or bounced recipient.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Sequence
from dataclasses import dataclass

import aiosmtplib
from aiosmtplib import (
    SMTPConnectResponseError,
    SMTPException,
    SMTPResponseException,
    SMTPServerDisconnected,
    SMTPTimeoutError,
)

from services.delivery.core.plan import tls_missing, tls_step
from services.delivery.core.replies import (
    CONNECT_FAILED,
    CONNECTION_LOST,
    NOT_IMPLEMENTED,
    PROTOCOL_ERROR,
    Reply,
)
from services.delivery.core.transaction import Transcript

log = logging.getLogger(__name__)

# RFC 5321 section 4.5.3.2 minimum timeouts for commands and the end of DATA.
COMMAND_TIMEOUT_S = 300.0
DATA_TIMEOUT_S = 600.0

TLS_FAILED = "4.7.5"  # cryptographic failure
AUTH_FAILED = "4.7.0"


@dataclass(frozen=True)
class RelayTarget:
    host: str
    port: int
    helo: str
    tls: str  # delivery.tls: opportunistic | required | none
    connect_timeout: float
    auth_method: str | None = None  # None = no login; "smtp_auth" | "pop3_before_smtp"
    username: str | None = None
    password: str | None = None


@dataclass(frozen=True)
class Attempt:
    transcript: Transcript
    tls_version: str | None = None


class _Broken(Exception):
    """The conversation cannot go on; `reply` says why, for every recipient not yet answered."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(reply.text)
        self.reply = reply


def _reply(exc: SMTPResponseException) -> Reply:
    return Reply(exc.code, exc.message)


def _no_verify_context() -> ssl.SSLContext:
    # delivery.tls opportunistic and required both encrypt without verifying the
    # certificate (Postfix's "may" and "encrypt" levels): MX certificates rarely match.
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class _Session:
    def __init__(self, target: RelayTarget) -> None:
        self.target = target
        self.smtp = aiosmtplib.SMTP(
            hostname=target.host,
            port=target.port,
            local_hostname=target.helo,
            timeout=COMMAND_TIMEOUT_S,
            start_tls=False,
            validate_certs=False,
        )
        self.tls_version: str | None = None

    async def open(self) -> None:
        host = self.target.host
        try:
            await self.smtp.connect(timeout=self.target.connect_timeout)
        except SMTPConnectResponseError as exc:
            # A refused greeting: try again later, as Postfix does (the host may recover).
            raise _Broken(
                Reply(0, f"{host} refused to talk to us: {exc.code} {exc.message}", "4.3.2")
            ) from None
        except (SMTPTimeoutError, TimeoutError):
            raise _Broken(Reply(0, f"connect to {host}: timed out", CONNECT_FAILED)) from None
        except (SMTPException, OSError) as exc:
            raise _Broken(Reply(0, f"connect to {host}: {exc}", CONNECT_FAILED)) from None
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
                raise _Broken(_deferring(exc, "HELO")) from None

    async def _maybe_starttls(self) -> None:
        step = tls_step(self.target.tls, self.smtp.supports_extension("starttls"))
        if step == "plain":
            return
        if step == "defer":
            raise _Broken(tls_missing(self.target.host))
        try:
            await self.smtp.starttls(tls_context=_no_verify_context())
        except SMTPResponseException as exc:
            if self.target.tls == "required":
                raise _Broken(_deferring(exc, "STARTTLS")) from None
            # Offered but refused: opportunistic TLS carries on in plain text.
            log.info("STARTTLS refused by %s (%s); continuing without TLS", self.target.host, exc)
            return
        except ssl.SSLError as exc:
            reply = Reply(0, f"TLS handshake with {self.target.host}: {exc}", TLS_FAILED)
            raise _Broken(reply) from None
        ssl_object = self.smtp.get_transport_info("ssl_object")
        self.tls_version = ssl_object.version() if ssl_object is not None else "TLS"
        await self._hello()  # RFC 3207: forget everything learnt before TLS

    async def _maybe_login(self) -> None:
        method = self.target.auth_method
        if method is None:
            return
        if method != "smtp_auth":
            raise _Broken(
                Reply(0, f"relay authentication {method} is not implemented yet", NOT_IMPLEMENTED)
            )
        try:
            await self.smtp.login(self.target.username or "", self.target.password or "")
        except SMTPResponseException as exc:
            # A wrong password is an operator's fix, not the sender's fault: keep the mail.
            raise _Broken(
                Reply(0, f"AUTH at {self.target.host}: {exc.code} {exc.message}", AUTH_FAILED)
            ) from None
        except SMTPException as exc:
            raise _Broken(Reply(0, f"AUTH at {self.target.host}: {exc}", AUTH_FAILED)) from None

    async def mail(self, sender: str, size: int) -> Reply:
        options = [f"SIZE={size}"] if self.smtp.supports_extension("size") else []
        try:
            resp = await self.smtp.mail(sender, options=options)
        except SMTPResponseException as exc:
            return _reply(exc)
        return Reply(resp.code, resp.message)

    async def rcpt(self, recipient: str) -> Reply:
        try:
            resp = await self.smtp.rcpt(recipient)
        except SMTPResponseException as exc:
            return _reply(exc)
        return Reply(resp.code, resp.message)

    async def data(self, body: bytes) -> Reply:
        try:
            resp = await self.smtp.data(body, timeout=DATA_TIMEOUT_S)
        except SMTPResponseException as exc:
            return _reply(exc)
        return Reply(resp.code, resp.message)

    async def close(self) -> None:
        if not self.smtp.is_connected:
            return
        try:
            await asyncio.wait_for(self.smtp.quit(), timeout=5.0)
        except (SMTPException, OSError, TimeoutError):
            self.smtp.close()


def _deferring(exc: SMTPResponseException, command: str) -> Reply:
    """A refusal of a set-up command: never a reason to bounce, always to retry."""
    return Reply(0, f"{command}: {exc.code} {exc.message}", PROTOCOL_ERROR)


def _lost(host: str, exc: BaseException) -> Reply:
    what = "timed out" if isinstance(exc, TimeoutError) else f"connection lost ({exc})"
    return Reply(0, f"{host}: {what}", CONNECTION_LOST)


async def deliver(
    target: RelayTarget, sender: str, recipients: Sequence[str], body: bytes, size: int
) -> Attempt:
    """MAIL, one RCPT per recipient, DATA once if anyone was accepted; never raises SMTP errors."""
    session = _Session(target)
    mail: Reply | None = None
    rcpts: list[Reply] = []
    data: Reply | None = None
    broken: Reply | None = None
    try:
        await session.open()
        mail = await session.mail(sender, size)
        if mail.outcome == "succeeded":
            for address in recipients:
                rcpts.append(await session.rcpt(address))
            if Transcript(mail=mail, rcpts=tuple(rcpts)).needs_data:
                data = await session.data(body)
    except _Broken as exc:
        broken = exc.reply
    except (SMTPServerDisconnected, SMTPTimeoutError, TimeoutError, OSError) as exc:
        broken = _lost(target.host, exc)
    except SMTPException as exc:
        broken = Reply(0, f"{target.host}: {exc}", PROTOCOL_ERROR)
    finally:
        await session.close()
    transcript = Transcript(mail=mail, rcpts=tuple(rcpts), data=data, broken=broken)
    return Attempt(transcript, session.tls_version)
