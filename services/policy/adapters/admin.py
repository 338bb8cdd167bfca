"""`mailbus blocks list|remove` answered by policy (nats.micro endpoints, one per operation).

Policy answers rather than the CLI touching the bucket itself: the block
format, the time the core judges blocks with, the reset of the count that led
to a block and the ClientUnblocked event all stay in one place.

Requests and replies are JSON:
    list   {}                                -> {"blocks": [block, ...]}
    remove {"address": A, "operator": O}     -> {"removed": block | null, "address": A}
    any failure                              -> {"error": text}
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from nats.micro.request import Handler, Request
from nats.micro.service import Service as MicroService

from libs.common.contract import subjects
from libs.common.mail import maillines
from libs.common.runtime import maillog
from services.policy.adapters.blocks import BlockStore
from services.policy.adapters.counters import SlidingCounters
from services.policy.core import Block, canonical_ip

log = logging.getLogger(__name__)


def block_json(block: Block) -> dict[str, Any]:
    return {
        "address": block.client_ip,
        "reason": block.reason,
        "rule": block.rule,
        "start": block.start.isoformat(),
        "end": block.end.isoformat(),
    }


class BlocksEndpoints:
    def __init__(
        self, blocks: BlockStore, counters: SlidingCounters, clock: Callable[[], datetime]
    ) -> None:
        self._blocks = blocks
        self._counters = counters
        self._clock = clock

    async def register(self, micro: MicroService) -> None:
        for op, handler in (("list", self._list), ("remove", self._remove)):
            await micro.add_endpoint(
                name=f"blocks-{op}", subject=subjects.blocks_api_subject(op), handler=_json(handler)
            )

    async def _list(self, body: dict[str, Any]) -> dict[str, Any]:
        return {"blocks": [block_json(b) for b in await self._blocks.active(self._clock())]}

    async def _remove(self, body: dict[str, Any]) -> dict[str, Any]:
        text = str(body.get("address", ""))
        ip = canonical_ip(text)
        if ip is None:
            return {"error": f"{text!r} is not an IP address"}
        operator = str(body.get("operator", ""))
        lifted = await self._blocks.lift(ip, self._clock(), operator)
        # Lifted means a fresh start, not a block again at the next unknown recipient.
        await self._counters.reset(subjects.unknown_recipients_key(ip))
        if lifted is not None:
            maillog.emit(maillines.unblocked(ip, operator))
        return {"address": ip, "removed": block_json(lifted) if lifted is not None else None}


def _json(op: Callable[[dict[str, Any]], Any]) -> Handler:
    async def handle(request: Request) -> None:
        try:
            body = json.loads(request.data or b"{}")
            reply = await op(body if isinstance(body, dict) else {})
        except Exception as exc:
            log.exception("blocks request failed")
            reply = {"error": f"{type(exc).__name__}: {exc}"}
        await request.respond(json.dumps(reply).encode())

    return handle
