"""Which queue partitions a replica should own, given the live replicas: pure, no I/O.

Every replica runs the same reckoning on the same inputs (the sorted names of the live
members, the partition count) and so arrives at the same targets: the first
`P mod n` members own one partition more than the rest, and the targets add up to P
exactly, so once each replica holds its target every partition has an owner and
nobody keeps looking for more. A replica takes free partitions at once when below its
target (a dead replica's partitions must move within seconds), but gives back extras
only after it has been above its target for a few rounds in a row, so that a member
key seen a moment late does not make partitions flap back and forth.

The I/O around this (leases, member keys) is services/queue/adapters/partitions.py;
this module is kept free of it by an import-linter contract.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

# Rounds above target before a replica gives partitions back.
RELEASE_PATIENCE = 3


def target(members: Sequence[str], me: str, partitions: int) -> int:
    """How many partitions `me` should own; all of them when it sees no member list
    (its own key not listed yet), since a lone replica must own everything."""
    live = sorted(set(members) | {me})
    base, extra = divmod(partitions, len(live))
    return base + (1 if live.index(me) < extra else 0)


def preference(me: str, partitions: int) -> list[int]:
    """The order in which `me` tries free partitions: rotated by a stable function of
    its name, so replicas starting together do not all race for partition 0 first."""
    start = sum(me.encode()) % partitions
    return [(start + i) % partitions for i in range(partitions)]


@dataclass(frozen=True)
class Plan:
    take: int = 0  # how many more partitions to take (trying them in preference order)
    release: tuple[int, ...] = ()


def plan(
    owned: Collection[int], want: int, rounds_above: int, patience: int = RELEASE_PATIENCE
) -> Plan:
    """One round: take up to `want` at once, or give back the highest-numbered extras
    once above `want` for `patience` rounds in a row (partition 0 last: its owner also
    runs the orphan sweep, so keeping it avoids a handover of that too)."""
    have = set(owned)
    if len(have) < want:
        return Plan(take=want - len(have))
    if len(have) > want and rounds_above >= patience:
        order = sorted(have, key=lambda p: (p == 0, -p))
        return Plan(release=tuple(order[: len(have) - want]))
    return Plan()
