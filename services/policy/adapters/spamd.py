"""SpamAssassin's spamd over its own protocol (aiospamc), one SYMBOLS request per message.

SYMBOLS answers the score and the names of the rules that hit in one round
trip, which is all the headers need; the message goes to spamd once. spamd
down, answering an error, or slower than `antispam.spamd_timeout` is no
verdict: the core turns that into `antispam.spamd_failure`.
"""

from __future__ import annotations

import logging
from typing import Literal

import aiospamc
from aiospamc.connections import Timeout
from aiospamc.exceptions import TimeoutException
from aiospamc.header_values import SpamValue

log = logging.getLogger(__name__)

Failure = Literal["spamd_unavailable", "spamd_timeout"]


class SpamdScanner:
    def __init__(self, address: str, timeout: float) -> None:
        host, _, port = address.rpartition(":")
        self._host = host.strip("[]")
        self._port = int(port)
        self._timeout = timeout

    async def scan(self, message: bytes) -> tuple[float, tuple[str, ...]] | Failure:
        """(score, rules that hit), or why there is no score."""
        try:
            response = await aiospamc.symbols(
                message,
                host=self._host,
                port=self._port,
                timeout=Timeout(total=self._timeout, connection=self._timeout),
            )
        except TimeoutException:
            log.warning(
                "spamd %s:%d: no answer within %.1fs", self._host, self._port, self._timeout
            )
            return "spamd_timeout"
        except Exception as exc:
            log.warning("spamd %s:%d: %s: %s", self._host, self._port, type(exc).__name__, exc)
            return "spamd_unavailable"
        spam = response.headers.get("Spam")
        if not isinstance(spam, SpamValue):
            log.warning("spamd %s:%d: answer without a Spam header", self._host, self._port)
            return "spamd_unavailable"
        tests = tuple(t for t in response.body.decode("ascii", "replace").split(",") if t)
        return float(spam.score), tests
