"""Policy's copy of every ingress instance's open connections, fed by their reports.

Pure: the adapter hands in each `ConnectionReport` and the monotonic clock;
nothing here reads the bus. One entry per instance: its last sequence number,
when its counts stop counting (the report's TTL from its arrival), and its
counts per client address.

The connect query brings the asking instance's own count, so the copy is
asked only for the others (`others`); its lag behind them is one report's
flight, and that is the window in which two instances could both let in the
last connection an address may have. An instance that has stopped reporting
counts nothing once its TTL has passed.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.common.contract.policy import ConnectionReport


@dataclass
class _Instance:
    seq: int
    expires: float
    counts: dict[str, int] = field(default_factory=dict)


class ConnectionCopy:
    def __init__(self) -> None:
        self._instances: dict[str, _Instance] = {}

    def apply(self, report: ConnectionReport, now: float) -> bool:
        """True when the report is a change from an instance the copy does not know (or
        no longer: its TTL ran out while reports were lost, e.g. a long nats-server
        outage): the copy lacks the rest of its table until its next heartbeat."""
        known = self._instances.get(report.instance)
        if known is not None and known.expires <= now:
            del self._instances[report.instance]
            known = None
        if known is not None and report.seq <= known.seq:
            return False  # an older report, or the same one twice
        if report.ttl <= 0:
            self._instances.pop(report.instance, None)  # the instance is stopping
            return False
        incomplete = known is None and not report.full
        if known is None:
            # A first delta before the first heartbeat is still a true count for its
            # addresses; the rest of the table arrives with the heartbeat.
            known = self._instances[report.instance] = _Instance(report.seq, 0.0)
        if report.full:
            known.counts = {}
        for ip, count in report.counts.items():
            if count > 0:
                known.counts[ip] = count
            else:
                known.counts.pop(ip, None)
        known.seq = report.seq
        known.expires = now + report.ttl
        return incomplete

    def others(self, ip: str, instance: str | None, now: float) -> int:
        """Open connections from `ip` on every live instance but `instance`."""
        total = 0
        for name, known in list(self._instances.items()):
            if known.expires <= now:
                del self._instances[name]
                continue
            if name != instance:
                total += known.counts.get(ip, 0)
        return total

    @property
    def instances(self) -> int:
        return len(self._instances)
