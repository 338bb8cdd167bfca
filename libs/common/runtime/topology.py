"""Who owns the bus's topology: `mailbus migrate` changes it, services only check it.

If every service brought every stream "to its own" configuration at start, two
versions running side by side in a rolling upgrade would overwrite each other's
settings, and every service's NATS user would need the right to change every
stream. So one step (`mailbus migrate`, run by `mailbus up` before the services and
as a Job before an upgrade in a cluster) creates and updates the streams, buckets
and stores (`bus.ensure_topology`). A service at start creates what is *missing*
(a fresh server: creating is harmless, and no service waits for another), but when
something exists with a configuration other than its own it refuses to start
(CannotStart: one line naming each difference, exit 78, not restarted by
`mailbus up`), and changes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from nats.errors import Error as NatsError
from nats.js import JetStreamContext, api
from nats.js.errors import NotFoundError

from libs.common.contract import subjects
from libs.common.contract.errors import CannotStart
from libs.common.runtime import bus, topology_bodies


class TopologyMismatch(CannotStart):
    def __init__(self, differences: list[str]) -> None:
        super().__init__(
            "the bus's streams differ from this version's (run `mailbus migrate`): "
            + "; ".join(differences)
        )
        self.differences = differences


@dataclass(frozen=True)
class Found:
    missing: list[str]
    differences: list[str]


def _streams_wanted(replicas: int) -> dict[str, api.StreamConfig]:
    return {cfg.name or "": cfg for cfg in bus.stream_configs(replicas)}


def _stores_wanted() -> list[str]:
    return [subjects.kv_stream(b) for b in bus.KV_BUCKETS] + [f"OBJ_{b}" for b in bus.OBJECT_STORES]


def _compare_stream(want: api.StreamConfig, have: api.StreamConfig) -> list[str]:
    pairs: list[tuple[str, object, object]] = [
        ("subjects", sorted(want.subjects or []), sorted(have.subjects or [])),
        ("retention", want.retention, have.retention),
        ("storage", want.storage, have.storage),
        ("replicas", want.num_replicas, have.num_replicas),
        ("max_msgs_per_subject", want.max_msgs_per_subject, have.max_msgs_per_subject),
        ("max_age", want.max_age or 0.0, have.max_age or 0.0),
        ("allow_msg_ttl", bool(want.allow_msg_ttl), bool(have.allow_msg_ttl)),
        ("allow_msg_schedules", bool(want.allow_msg_schedules), bool(have.allow_msg_schedules)),
    ]
    if want.allow_direct is not None:
        pairs.append(("allow_direct", bool(want.allow_direct), bool(have.allow_direct)))
    # 0 asks for the server's default window; any other value must be kept as asked.
    if want.duplicate_window:
        pairs.append(("duplicate_window", want.duplicate_window, have.duplicate_window))
    return [
        f"{want.name}: {name} is {_show(h)}, this version needs {_show(w)}"
        for name, w, h in pairs
        if w != h
    ]


def _show(value: object) -> str:
    return (
        str(value.value) if isinstance(value, api.StorageType | api.RetentionPolicy) else str(value)
    )


async def inspect(js: JetStreamContext, replicas: int) -> Found:
    missing: list[str] = []
    differences: list[str] = []
    for name, want in _streams_wanted(replicas).items():
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            missing.append(name)
            continue
        differences += _compare_stream(want, info.config)
    for name in _stores_wanted():
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            missing.append(name)
            continue
        have = info.config
        if have.storage != api.StorageType.FILE:
            differences.append(f"{name}: storage is {_show(have.storage)}, this version needs file")
        if have.num_replicas != replicas:
            differences.append(
                f"{name}: replicas is {have.num_replicas}, this version needs {replicas}"
            )
    return Found(missing, differences)


class TopologyMissing(CannotStart):
    def __init__(self, missing: list[str], reason: str) -> None:
        super().__init__(
            f"the bus lacks {', '.join(missing)} and this service may not create it "
            f"({reason}): run `mailbus migrate`"
        )
        self.missing = missing


async def prepare(js: JetStreamContext, replicas: int) -> None:
    """A service's start: create what is missing, refuse (TopologyMismatch) what differs.

    Under the deployed bus permissions a service's user may not create streams (only
    `mailbus migrate`'s admin may): the create is refused, and the service does not
    start until the topology is there (TopologyMissing), naming what lacks."""
    found = await inspect(js, replicas)
    if found.differences:
        raise TopologyMismatch(found.differences)
    if found.missing:
        # Creating only, and only what is missing: nothing found is touched.
        try:
            await bus.ensure_topology(js, replicas, only=set(found.missing))
        except (TimeoutError, NatsError) as exc:  # a refused request goes unanswered
            raise TopologyMissing(found.missing, type(exc).__name__) from exc


async def migrate(js: JetStreamContext, replicas: int) -> list[str]:
    """Create and update everything to this version's configuration; what was changed.

    Then the bodies still in an older version's object store are moved into the
    bodies stream (topology_bodies), which exists by then."""
    found = await inspect(js, replicas)
    await bus.ensure_topology(js, replicas)
    after = await inspect(js, replicas)
    if after.missing or after.differences:
        raise TopologyMismatch(after.missing + after.differences)
    changed = [f"{name}: created" for name in found.missing] + found.differences
    moved = await topology_bodies.move_old_bodies(js)
    if moved is not None:
        changed.append(
            f"{topology_bodies.OLD_BUCKET}: {moved.copied} bodies copied into "
            f"{subjects.BODIES_STREAM} ({moved.skipped} already there), bucket removed"
        )
    return changed
