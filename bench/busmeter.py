"""Count what messages cost on the bus: round trips per service, acks, stored writes.

Connects as mailbus's operator (the admin URL `mailbus up` writes) and listens to
every subject of the account, so the figures are counted, not estimated:

- a round trip is a message published with a reply subject under a service's
  own inbox prefix (`_INBOX_mailbus-<svc>`): a JetStream publish waiting for its
  PubAck, a request to policy, a JetStream API call, a direct get;
- an ack is a publish to `$JS.ACK.<stream>.<consumer>...` (not awaited);
- a stored write is one more message appended to any stream (its last sequence
  moved), KV buckets included; purges and deletes are not writes.

The background traffic of an idle system (lease renewals, lag reports) is
measured for a few seconds first and taken off at its rate.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import nats
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from libs.common.contract import subjects

SERVICES = ("ingress", "policy", "queue", "delivery", "notifier")
_INBOXES = {subjects.inbox_prefix(subjects.service_name(s)): s for s in SERVICES}
_CONSUMERS = {
    consumer: service
    for service, pairs in subjects.SERVICE_CONSUMERS.items()
    for _, consumer in pairs
}


def _kind(subject: str) -> str:
    if subject.startswith("$JS.API."):
        parts = subject.split(".")
        return ".".join(parts[2:4]) if parts[2] in ("STREAM", "CONSUMER") else parts[2]
    if subject.startswith("$KV."):
        return "KV put"
    return ".".join(subject.split(".")[:2]) + " publish"


@dataclass
class Tally:
    round_trips: Counter[str] = field(default_factory=Counter)  # by service
    kinds: Counter[tuple[str, str]] = field(default_factory=Counter)  # (service, kind)
    acks: Counter[str] = field(default_factory=Counter)

    def count(self, msg: Msg) -> None:
        if msg.subject.startswith("$JS.ACK."):
            consumer = msg.subject.split(".")[3]
            self.acks[_CONSUMERS.get(consumer, consumer)] += 1
            return
        for prefix, service in _INBOXES.items():
            if msg.reply.startswith(prefix):
                self.round_trips[service] += 1
                self.kinds[(service, _kind(msg.subject))] += 1
                return


class BusMeter:
    def __init__(self, admin_url: str) -> None:
        self._url = admin_url
        self._nc: NATS | None = None
        self._js: JetStreamContext | None = None
        self._tally = Tally()
        self._idle = Tally()
        self._idle_s = 0.0
        self._started = 0.0
        self._seqs: dict[str, int] = {}
        self._idle_writes = 0
        self._loaded = False

    async def start(self, idle_s: float = 3.0) -> None:
        self._nc = await nats.connect(servers=[self._url], name="mailbus-bench-meter")
        self._js = self._nc.jetstream()
        before = await self._last_seqs()
        self._idle_s = idle_s
        await self._nc.subscribe(">", cb=self._on_msg)
        await asyncio.sleep(idle_s)
        self._seqs = await self._last_seqs()
        self._idle_writes = sum(seq - before.get(name, 0) for name, seq in self._seqs.items())
        self._loaded = True
        self._started = time.monotonic()

    async def _on_msg(self, msg: Msg) -> None:
        (self._tally if self._loaded else self._idle).count(msg)

    async def _last_seqs(self) -> dict[str, int]:
        assert self._js is not None
        return {
            info.config.name or "": info.state.last_seq for info in await self._js.streams_info()
        }

    async def report(self, messages: int) -> list[str]:
        """Lines of figures per message; stops listening."""
        assert self._nc is not None
        elapsed = time.monotonic() - self._started
        seqs = await self._last_seqs()
        await self._nc.drain()
        scale = elapsed / self._idle_s if self._idle_s else 0.0
        per = max(1, messages)

        def net(load: Counter[str], idle: Counter[str], key: str) -> float:
            return max(0.0, load[key] - idle[key] * scale) / per

        lines = []
        total_rt = 0.0
        for service in SERVICES:
            rt = net(self._tally.round_trips, self._idle.round_trips, service)
            acks = net(self._tally.acks, self._idle.acks, service)
            total_rt += rt
            kinds = ", ".join(
                f"{kind} {count / per:.2f}"
                for (svc, kind), count in sorted(self._tally.kinds.items())
                if svc == service and count / per >= 0.05
            )
            lines.append(f"round trips/msg     {service:<9} {rt:5.2f} + {acks:.2f} acks  ({kinds})")
        lines.append(f"round trips/msg     total     {total_rt:5.2f}")
        writes = {
            name: seq - self._seqs.get(name, 0)
            for name, seq in seqs.items()
            if seq - self._seqs.get(name, 0) > 0
        }
        detail = ", ".join(f"{name} {n / per:.2f}" for name, n in sorted(writes.items()))
        stored = max(0.0, sum(writes.values()) - self._idle_writes * scale) / per
        lines.append(f"stored writes/msg   {stored:.2f}  (before idle is taken off: {detail})")
        return lines
