"""Least privilege on the bus: what each service may publish and subscribe to.

Derived from the names in `subjects.py`, rendered as a nats-server
`authorization` block. `mailbus up` uses it with generated passwords; compose
and Kubernetes include the file this module prints (`python -m
libs.common.contract.permissions > deploy/nats/permissions.conf`), whose passwords come
from environment variables. A test runs the services under it and shows that a
forbidden publish or subscribe is refused.

What a service can never do, by construction: ingress cannot publish delivery
results or jobs; delivery cannot publish MessageReceived or touch the queue's
timers; only the queue writes jobs and schedules; only policy writes counters,
grants and blocks (ingress reports its own open connections). No service may
create, update or delete a stream: it only verifies them at start; `mailbus migrate`,
as the admin user, owns the topology (libs/common/runtime/topology.py).
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from libs.common.contract import subjects as s
from libs.common.contract.events import ACCESS_EVENT_TYPES, EVENT_TYPES

ADMIN_USER = "mailbus-admin"


@dataclass(frozen=True)
class Permissions:
    publish: tuple[str, ...]
    subscribe: tuple[str, ...]


def _stream_names() -> list[str]:
    return [
        s.EVENTS_STREAM,
        s.JOBS_STREAM,
        s.TIMERS_STREAM,
        s.ACCESS_STREAM,
        s.MAILBOXES_STREAM,
        s.MAILBOX_LOCKS_STREAM,
        s.SHADOW_STREAM,
        s.BODIES_STREAM,
        f"OBJ_{s.MAILBOX_BODIES_BUCKET}",
        *(
            s.kv_stream(b)
            for b in (
                s.POLICY_COUNTERS_BUCKET,
                s.POP3_GRANTS_BUCKET,
                s.AUTH_FAILURES_BUCKET,
                s.CONNECTIONS_BUCKET,
                s.BLOCKS_BUCKET,
                s.QUEUE_LEADER_BUCKET,
                s.DELIVERY_CLAIMS_BUCKET,
                s.CONFIG_BUCKET,
            )
        ),
    ]


def _topology() -> list[str]:
    """Start-up: look at the account and verify the shared streams. Creating and
    updating them is `mailbus migrate`'s, as the admin user (runtime/topology.py)."""
    out = ["$JS.API.INFO", "$JS.API.STREAM.NAMES", "$JS.API.STREAM.LIST"]
    out += [f"$JS.API.STREAM.INFO.{name}" for name in _stream_names()]
    return out


def _read_stream(stream: str) -> list[str]:
    """Random access and ordered (ephemeral) consumers on one stream."""
    return [
        f"$JS.API.STREAM.INFO.{stream}",
        f"$JS.API.STREAM.MSG.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}",
        f"$JS.API.DIRECT.GET.{stream}.>",
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DELETE.{stream}.>",
        f"$JS.API.CONSUMER.INFO.{stream}.>",
        f"$JS.FC.{stream}.>",
    ]


def _consume(stream: str, consumer: str) -> list[str]:
    """A durable pull consumer: create it, pull, ack."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}",
        f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
        f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
        f"$JS.ACK.{stream}.{consumer}.>",
    ]


def _object_store(bucket: str, write: bool) -> list[str]:
    out = _read_stream(f"OBJ_{bucket}")
    if write:
        out += [f"$O.{bucket}.>", f"$JS.API.STREAM.PURGE.OBJ_{bucket}"]
    return out


def _bodies(read: bool, write: bool) -> list[str]:
    """Message bodies: write = store and remove (a purge), read = direct get (and the
    leader's get, asked before a body is called missing)."""
    out: list[str] = []
    if read:
        out += [
            f"$JS.API.DIRECT.GET.{s.BODIES_STREAM}.>",
            f"$JS.API.STREAM.MSG.GET.{s.BODIES_STREAM}",
        ]
    if write:
        out += [f"{s.BODIES_PREFIX}.>", f"$JS.API.STREAM.PURGE.{s.BODIES_STREAM}"]
    return out


def _kv(bucket: str, write: bool) -> list[str]:
    out = _read_stream(s.kv_stream(bucket))
    if write:
        stream = s.kv_stream(bucket)
        out += [
            f"$KV.{bucket}.>",
            f"$JS.API.STREAM.MSG.DELETE.{stream}",
            f"$JS.API.STREAM.PURGE.{stream}",
        ]
    return out


def _events(service: str) -> list[str]:
    """The event subjects `service` publishes: each event type names its publishers."""
    return [s.events_of_type(t.__name__) for t in EVENT_TYPES if service in t.publishers]


def _access_events(service: str) -> list[str]:
    return [s.access_subject(t.__name__) for t in ACCESS_EVENT_TYPES if service in t.publishers]


def _micro(service: str) -> list[str]:
    """nats.micro answers $SRV.PING/INFO/STATS, for all services and for its name."""
    name = s.service_name(service)
    return [
        f"$SRV.{v}{suffix}"
        for v in ("PING", "INFO", "STATS")
        for suffix in ("", f".{name}", f".{name}.*")
    ]


def _inbox(service: str) -> str:
    return f"{s.inbox_prefix(s.service_name(service))}.>"


def _live_config() -> list[str]:
    """Every service reads (watches) the configuration revisions; only operators write."""
    return _kv(s.CONFIG_BUCKET, write=False)


def _service(service: str, publish: Iterable[str], subscribe: Iterable[str]) -> Permissions:
    pub = [*_topology(), *_live_config(), *publish]
    sub = [_inbox(service), *_micro(service), s.CONFIG_STATUS_SUBJECT, *subscribe]
    return Permissions(tuple(dict.fromkeys(pub)), tuple(dict.fromkeys(sub)))


def service_permissions() -> dict[str, Permissions]:
    mbox_bodies = s.MAILBOX_BODIES_BUCKET
    return {
        "ingress": _service(
            "ingress",
            publish=[
                f"{s.POLICY_PREFIX}.*",
                *_events("ingress"),
                *_bodies(read=False, write=True),
                *_access_events("ingress"),
                # Its connection table for every policy replica (and, for the ingress
                # instances of the previous version during an upgrade, their leases).
                s.CONNECTIONS_REPORT_SUBJECT,
                *_kv(s.CONNECTIONS_BUCKET, write=True),
                # POP3 reads and deletes mailbox entries and takes the mailbox lock.
                *_read_stream(s.MAILBOXES_STREAM),
                f"$JS.API.STREAM.MSG.DELETE.{s.MAILBOXES_STREAM}",
                *_object_store(mbox_bodies, write=True),
                f"{s.MAILBOX_LOCKS_PREFIX}.>",
                *_read_stream(s.MAILBOX_LOCKS_STREAM),
                f"$JS.API.STREAM.MSG.DELETE.{s.MAILBOX_LOCKS_STREAM}",
            ],
            subscribe=[s.CONNECTIONS_HELLO_SUBJECT],
        ),
        "policy": _service(
            "policy",
            publish=[
                *_access_events("policy"),
                *_read_stream(s.ACCESS_STREAM),
                *_consume(s.ACCESS_STREAM, s.POLICY_GRANTS_CONSUMER),
                *_kv(s.POLICY_COUNTERS_BUCKET, write=True),
                *_kv(s.POP3_GRANTS_BUCKET, write=True),
                *_kv(s.AUTH_FAILURES_BUCKET, write=True),
                *_kv(s.BLOCKS_BUCKET, write=True),
                *_kv(s.CONNECTIONS_BUCKET, write=False),
                s.CONNECTIONS_HELLO_SUBJECT,
                # Decisions on which the shadow configuration differs (config shadow-report).
                s.SHADOW_SUBJECTS,
            ],
            subscribe=[
                f"{s.POLICY_PREFIX}.*",
                f"{s.BLOCKS_API_PREFIX}.*",
                s.CONNECTIONS_REPORT_SUBJECT,
            ],
        ),
        "queue": _service(
            "queue",
            publish=[
                *_events("queue"),
                # Each partition's epoch, and the single one of the versions before.
                s.QUEUE_EPOCH_SUBJECTS,
                s.QUEUE_EPOCH_SUBJECT,
                *_read_stream(s.EVENTS_STREAM),
                *_consume(s.EVENTS_STREAM, s.QUEUE_CONSUMER),
                *(
                    name
                    for p in range(s.QUEUE_PARTITIONS)
                    for name in _consume(s.EVENTS_STREAM, s.queue_consumer(p))
                ),
                f"{s.JOBS_PREFIX}.*",
                f"{s.TIMERS_PREFIX}.sched.>",
                *_read_stream(s.TIMERS_STREAM),
                f"$JS.API.STREAM.PURGE.{s.TIMERS_STREAM}",
                *_consume(s.TIMERS_STREAM, s.QUEUE_TIMERS_CONSUMER),
                *(
                    name
                    for p in range(s.QUEUE_PARTITIONS)
                    for name in _consume(s.TIMERS_STREAM, s.queue_timers_consumer(p))
                ),
                # Completion purges a body; the orphan sweep lists them (headers only).
                *_read_stream(s.BODIES_STREAM),
                f"$JS.API.STREAM.PURGE.{s.BODIES_STREAM}",
                *_kv(s.QUEUE_LEADER_BUCKET, write=True),
            ],
            subscribe=[f"{s.QUEUE_API_PREFIX}.*"],
        ),
        "delivery": _service(
            "delivery",
            publish=[
                *_events("delivery"),
                *_consume(s.JOBS_STREAM, s.DELIVERY_CONSUMER),
                *_bodies(read=True, write=False),
                f"{s.MAILBOXES_PREFIX}.*",
                *_read_stream(s.MAILBOXES_STREAM),
                *_object_store(mbox_bodies, write=True),
                *_kv(s.DELIVERY_CLAIMS_BUCKET, write=True),
            ],
            subscribe=[],
        ),
        "notifier": _service(
            "notifier",
            publish=[
                # A report is a new message: body, then its MessageReceived.
                *_events("notifier"),
                *_read_stream(s.EVENTS_STREAM),
                *_consume(s.EVENTS_STREAM, s.NOTIFIER_CONSUMER),
                *_bodies(read=True, write=True),
            ],
            subscribe=[],
        ),
    }


def _quote(items: Iterable[str]) -> str:
    return "[" + ", ".join(json.dumps(i) for i in items) + "]"


_ENV_REFERENCE = re.compile(r"\$[A-Za-z_][A-Za-z0-9_]*")


def authorization_block(passwords: Mapping[str, str], admin_password: str) -> str:
    """A nats-server `authorization` block: one user per service, plus an admin for
    operators' commands (`mailbus queue`, `mailbus blocks`) and `mailbus up`'s checks.

    A password of the form `$NAME` is left unquoted: nats-server reads it from the
    environment variable NAME (how compose and Kubernetes pass Secrets). A bcrypt
    hash (`$2a$...`, what `mailbus up` writes) is quoted like any other string.
    """

    def pw(value: str) -> str:
        return value if _ENV_REFERENCE.fullmatch(value) else json.dumps(value)

    lines = ["authorization {", "  users: ["]
    lines.append(f"    {{user: {json.dumps(ADMIN_USER)}, password: {pw(admin_password)}}}")
    for service, perms in service_permissions().items():
        user = json.dumps(s.service_name(service))
        lines += [
            f"    {{user: {user}, password: {pw(passwords[service])},",
            "     permissions: {",
            f"       publish: {{allow: {_quote(perms.publish)}}},",
            f"       subscribe: {{allow: {_quote(perms.subscribe)}}},",
            "       allow_responses: true",
            "     }}",
        ]
    lines += ["  ]", "}"]
    return "\n".join(lines) + "\n"


def env_password_name(user: str) -> str:
    return user.upper().replace("-", "_") + "_NATS_PASSWORD"


def deploy_file() -> str:
    """The file compose and Kubernetes include; passwords come from the environment."""
    header = (
        "# Generated by `python -m libs.common.contract.permissions`; do not edit.\n"
        "# Each password is read by nats-server from the environment variable named here.\n"
    )
    passwords = {svc: "$" + env_password_name(s.service_name(svc)) for svc in s.SERVICES}
    return header + authorization_block(passwords, "$" + env_password_name(ADMIN_USER))


if __name__ == "__main__":
    sys.stdout.write(deploy_file())
