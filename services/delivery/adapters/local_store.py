"""Delivery to local mailboxes: the JetStream mailbox store, or an LMTP server.

`LocalDelivery.deliver(job, body)` returns one reply per recipient of a job
whose destination is `local`; the worker turns them into result events like
any other delivery's. Every failure becomes a reply (a deferral when in doubt),
never an exception that would lose or bounce a recipient.

With `mailboxes.store: lmtp` no header is added: the LMTP server is the final
delivery agent and adds Return-Path and Delivered-To itself (as Dovecot does),
and one LMTP transaction carries every recipient of the job.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Literal

from nats.js import JetStreamContext

from libs.common.config import Config
from libs.common.config.fieldtypes import split_host_port
from libs.common.contract.events import DeliveryJob
from libs.common.mail.mailbox import MailboxStore, message_uid
from services.delivery.adapters.lmtp import LmtpTarget, deliver_lmtp
from services.delivery.core.local import (
    DELIVERED,
    STORE_UNAVAILABLE,
    delivery_headers,
    quota_reply,
)
from services.delivery.core.replies import Reply

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LocalSettings:
    store: Literal["jetstream", "lmtp"] = "jetstream"
    quota: int = 0  # bytes per mailbox; 0 = none (jetstream store only)
    lmtp: LmtpTarget | None = None


def local_settings(config: Config) -> LocalSettings:
    boxes = config.mailboxes
    lmtp = None
    if boxes.store == "lmtp" and boxes.lmtp_address:
        host, port = split_host_port(boxes.lmtp_address)
        lmtp = LmtpTarget(
            host=host,
            port=port,
            lhlo=config.server.hostname,
            connect_timeout=config.delivery.connect_timeout.total_seconds(),
        )
    return LocalSettings(store=boxes.store, quota=boxes.quota, lmtp=lmtp)


class LocalDelivery:
    def __init__(self, js: JetStreamContext, settings: LocalSettings) -> None:
        self._store = MailboxStore(js)
        self.settings = settings

    @property
    def remote_host(self) -> str:
        """What result events name as the receiving host."""
        lmtp = self.settings.lmtp
        if self.settings.store == "lmtp" and lmtp is not None:
            return f"{lmtp.host}:{lmtp.port}"
        return "mailbox"

    async def deliver(self, job: DeliveryJob, body: bytes) -> list[Reply]:
        recipients = [r.address for r in job.recipients]
        if self.settings.store == "lmtp":
            if self.settings.lmtp is None:
                return [STORE_UNAVAILABLE] * len(recipients)
            return await deliver_lmtp(self.settings.lmtp, job.mail_from, recipients, body)
        return [await self._store_one(job, address, body) for address in recipients]

    async def _store_one(self, job: DeliveryJob, address: str, body: bytes) -> Reply:
        content = delivery_headers(job.mail_from, address) + body
        try:
            if self.settings.quota > 0:
                entries = await self._store.entries(address)
                uid = message_uid(job.queue_id, address)
                # Stored by an attempt that crashed before its ack: done, whatever the quota.
                if any(entry.uid == uid for entry in entries):
                    return DELIVERED
                used = sum(entry.size for entry in entries)
                refusal = quota_reply(used, len(content), self.settings.quota)
                if refusal is not None:
                    log.info(
                        "%s: %s over quota (%d + %d > %d bytes)",
                        job.queue_id,
                        address,
                        used,
                        len(content),
                        self.settings.quota,
                    )
                    return refusal
            await self._store.append(address, job.queue_id, content)
        except Exception as exc:
            log.warning(
                "%s: mailbox %s not written: %s: %s", job.queue_id, address, type(exc).__name__, exc
            )
            return STORE_UNAVAILABLE
        return DELIVERED
