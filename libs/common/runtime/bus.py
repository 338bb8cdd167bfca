"""NATS connection and the idempotent set-up of every stream, bucket and store.

Any service may call `ensure_topology` at start: creating what exists already
is harmless, so no service depends on another having started first.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit, urlunsplit

import nats
from nats.aio.client import Client as NATS
from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError
from pydantic import BaseModel

from libs.common.contract import subjects
from libs.common.contract.events import Event, encode, event_type
from libs.common.runtime.telemetry import inject_headers, producer_span

log = logging.getLogger(__name__)

# Long enough to cover a consumer's redelivery after a crash: the same event id
# published again inside this window is dropped by the server, not duplicated.
DUPLICATE_WINDOW_S = 2 * 3600.0
ACCESS_EVENTS_MAX_AGE_S = 7 * 24 * 3600.0


async def connect(
    servers: Sequence[str],
    name: str,
    credentials_file: str | None = None,
    tls: ssl.SSLContext | None = None,
) -> NATS:
    """Connect with unbounded reconnects: a service outlives NATS restarts.
    `tls` (runtime/nats_tls.py) makes every connection TLS, verified."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats: %s", exc)

    async def on_disconnect() -> None:
        log.warning("nats: disconnected")

    async def on_reconnect() -> None:
        log.info("nats: reconnected")

    kwargs: dict[str, object] = {}
    if credentials_file:
        kwargs["user_credentials"] = credentials_file
    plain, user, password = split_credentials(servers)
    if user is not None:
        kwargs["user"], kwargs["password"] = user, password
    if tls is not None:
        kwargs["tls"] = tls
    return await nats.connect(
        servers=plain,
        name=name,
        # A reply inbox of its own per service, so bus permissions can let a service
        # read only its own replies (libs/common/contract/permissions.py).
        inbox_prefix=subjects.inbox_prefix(name),
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        **kwargs,
    )


def split_credentials(servers: Sequence[str]) -> tuple[list[str], str | None, str | None]:
    """Take `user:password@` out of the URLs and give it to the connection instead.

    nats-py applies credentials in a URL to that URL only, not to the cluster
    members it learns from the server, so a failover to one of those would be
    refused; connection-wide credentials follow every reconnect.
    """
    plain: list[str] = []
    user: str | None = None
    password: str | None = None
    for server in servers:
        parts = urlsplit(server if "://" in server else f"nats://{server}")
        if parts.username is not None and user is None:
            user, password = unquote(parts.username), unquote(parts.password or "")
        host = parts.hostname or "127.0.0.1"
        netloc = f"[{host}]" if ":" in host else host
        if parts.port:
            netloc += f":{parts.port}"
        plain.append(urlunsplit((parts.scheme, netloc, parts.path, "", "")))
    return plain, user, password


@dataclass(frozen=True)
class Stream:
    """One stream of the topology, as far as it differs from a plain file-backed log
    that drops a re-published message id within DUPLICATE_WINDOW_S."""

    name: str
    subjects: str
    retention: api.RetentionPolicy = api.RetentionPolicy.LIMITS
    duplicate_window: float = DUPLICATE_WINDOW_S
    max_msgs_per_subject: int = -1  # -1: no limit
    max_age: float | None = None
    allow_msg_ttl: bool | None = None
    allow_msg_schedules: bool | None = None
    allow_direct: bool | None = None


STREAMS: tuple[Stream, ...] = (
    Stream(subjects.EVENTS_STREAM, subjects.EVENTS_SUBJECTS),
    Stream(subjects.JOBS_STREAM, subjects.JOBS_SUBJECTS, api.RetentionPolicy.WORK_QUEUE),
    # One schedule per message and kind (publishing again replaces it); the server
    # fires it into this same stream (services/queue/adapters/timers.py).
    Stream(
        subjects.TIMERS_STREAM,
        subjects.TIMERS_SUBJECTS,
        max_msgs_per_subject=1,
        allow_msg_ttl=True,
        allow_msg_schedules=True,
    ),
    # An audit trail of logins, and what POP3-before-SMTP grants are made from;
    # grants last minutes, so a week covers any consumer that was down.
    Stream(subjects.ACCESS_STREAM, subjects.ACCESS_SUBJECTS, max_age=ACCESS_EVENTS_MAX_AGE_S),
    # Delivery appends under a deterministic id, so a redelivered job stores once;
    # POP3 deletes entries by sequence at QUIT (no stream here denies deletes).
    Stream(subjects.MAILBOXES_STREAM, subjects.MAILBOXES_SUBJECTS),
    # One lock per mailbox, taken by expected last sequence, freed by sequence or TTL;
    # lock writes carry no message id, so there is nothing to deduplicate.
    Stream(
        subjects.MAILBOX_LOCKS_STREAM,
        subjects.MAILBOX_LOCKS_SUBJECTS,
        duplicate_window=0,
        max_msgs_per_subject=1,
        allow_msg_ttl=True,
    ),
    # One body per queue id, read by direct get (no consumer) and purged on completion;
    # one message per subject, so a retried write replaces (libs/common/mail/bodies.py).
    Stream(
        subjects.BODIES_STREAM,
        subjects.BODIES_SUBJECTS,
        duplicate_window=0,
        max_msgs_per_subject=1,
        allow_direct=True,
    ),
    # Shadow-policy differences are evidence for one decision (promote or not): a week.
    Stream(subjects.SHADOW_STREAM, subjects.SHADOW_SUBJECTS, max_age=ACCESS_EVENTS_MAX_AGE_S),
)


def stream_config(stream: Stream, replicas: int) -> api.StreamConfig:
    return api.StreamConfig(
        name=stream.name,
        subjects=[stream.subjects],
        retention=stream.retention,
        storage=api.StorageType.FILE,
        num_replicas=replicas,
        duplicate_window=stream.duplicate_window,
        max_msgs_per_subject=stream.max_msgs_per_subject,
        max_age=stream.max_age,
        allow_msg_ttl=stream.allow_msg_ttl,
        allow_msg_schedules=stream.allow_msg_schedules,
        allow_direct=stream.allow_direct,
    )


def stream_configs(replicas: int) -> list[api.StreamConfig]:
    return [stream_config(stream, replicas) for stream in STREAMS]


# Every bucket and store ensure_topology makes (all on file storage, `replicas` copies):
# what runtime/topology.py verifies besides the streams.
KV_BUCKETS: tuple[str, ...] = (
    subjects.POLICY_COUNTERS_BUCKET,
    subjects.POP3_GRANTS_BUCKET,
    subjects.AUTH_FAILURES_BUCKET,
    subjects.BLOCKS_BUCKET,
    subjects.QUEUE_LEADER_BUCKET,
    subjects.CONNECTIONS_BUCKET,
    subjects.DELIVERY_CLAIMS_BUCKET,
    subjects.CONFIG_BUCKET,
)
OBJECT_STORES: tuple[str, ...] = (subjects.MAILBOX_BODIES_BUCKET,)


async def ensure_topology(
    js: JetStreamContext, replicas: int = 1, only: Collection[str] | None = None
) -> None:
    """Create (and update) the streams, buckets and stores; `only`: just those of these
    stream names (a service creating what it found missing, nothing else)."""

    def wanted(stream: str) -> bool:
        return only is None or stream in only

    for cfg in stream_configs(replicas):
        if not wanted(cfg.name or ""):
            continue
        try:
            await js.add_stream(cfg)
        except BadRequestError:
            # Exists with another config: bring it to ours (e.g. replicas changed).
            await js.update_stream(cfg)
    if wanted(f"OBJ_{subjects.MAILBOX_BODIES_BUCKET}"):
        await js.create_object_store(
            subjects.MAILBOX_BODIES_BUCKET,
            config=api.ObjectStoreConfig(
                bucket=subjects.MAILBOX_BODIES_BUCKET,
                storage=api.StorageType.FILE,
                replicas=replicas,
            ),
        )
    # Buckets made by nats-py allow per-message TTLs; grants and failure counts use them.
    for bucket in KV_BUCKETS:
        if bucket in (subjects.CONNECTIONS_BUCKET, subjects.CONFIG_BUCKET):
            continue  # below
        if not wanted(subjects.kv_stream(bucket)):
            continue
        await js.create_key_value(
            api.KeyValueConfig(
                bucket=bucket, storage=api.StorageType.FILE, replicas=replicas, history=1
            )
        )
    # Configuration revisions: the history is what `mailbus config rollback` goes back to.
    if wanted(subjects.kv_stream(subjects.CONFIG_BUCKET)):
        await js.create_key_value(
            api.KeyValueConfig(
                bucket=subjects.CONFIG_BUCKET,
                storage=api.StorageType.FILE,
                replicas=replicas,
                history=subjects.CONFIG_HISTORY,
            )
        )
    # Connection leases live seconds, but on file storage: a memory bucket vanishes with a
    # standalone nats-server's restart, and policy, finding no bucket, fails closed (421)
    # until something recreates it. On disk it is back with the server, stale keys expire
    # by their TTLs, and the live ingress instances rewrite theirs within one renewal.
    if wanted(subjects.kv_stream(subjects.CONNECTIONS_BUCKET)):
        await ensure_connections_bucket(js, replicas)


async def ensure_connections_bucket(js: JetStreamContext, replicas: int = 1) -> None:
    config = api.KeyValueConfig(
        bucket=subjects.CONNECTIONS_BUCKET,
        storage=api.StorageType.FILE,
        replicas=replicas,
        history=1,
    )
    try:
        await js.create_key_value(config)
    except BadRequestError as exc:
        # Made by an older version in memory: storage cannot be updated in place, and
        # the leases are rewritten every few seconds, so a new bucket loses nothing.
        log.warning("%s: recreating on file storage (%s)", subjects.CONNECTIONS_BUCKET, exc)
        await js.delete_key_value(subjects.CONNECTIONS_BUCKET)
        await js.create_key_value(config)


async def publish_event(
    js: JetStreamContext, event: Event, headers: dict[str, str] | None = None
) -> api.PubAck:
    """Publish with the event id as Nats-Msg-Id, inside a PRODUCER span whose
    context travels in the headers, so the consumer's span continues this trace."""
    subject = subjects.event_subject(event.queue_id, event_type(event))
    with producer_span(subject, event.event_id):
        hdrs = inject_headers(headers)
        hdrs["Nats-Msg-Id"] = event.event_id
        hdrs["Mailbus-Event"] = event_type(event)
        return await js.publish(subject, encode(event), headers=hdrs)


async def publish_model(
    js: JetStreamContext,
    subject: str,
    model: BaseModel,
    msg_id: str,
    headers: dict[str, str] | None = None,
) -> api.PubAck:
    with producer_span(subject, msg_id):
        hdrs = inject_headers(headers)
        hdrs["Nats-Msg-Id"] = msg_id
        return await js.publish(subject, encode(model), headers=hdrs)


async def wait_for_jetstream(nc: NATS, limit_s: float = 10.0) -> JetStreamContext:
    """JetStream can lag the connection right after a server start."""
    js = nc.jetstream()
    deadline = asyncio.get_running_loop().time() + limit_s
    while True:
        try:
            await js.account_info()
            return js
        except Exception:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.1)
