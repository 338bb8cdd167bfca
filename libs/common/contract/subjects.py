"""Every NATS name mailbus uses: subjects, streams, consumers, buckets, services.

Keeping them in one module is what makes the bus reviewable: the permission
file, the manifests and the services all read from here.
"""

from __future__ import annotations

import base64

PREFIX = "mailbus"

# Request/reply: ingress asks policy at every SMTP stage.
POLICY_SERVICE = "mailbus-policy"
POLICY_PREFIX = f"{PREFIX}.policy.v1"
POLICY_STAGES = ("connect", "helo", "auth", "mail", "rcpt", "data")
# `mailbus check`: a query of any stage but auth, answered as it would be, counting
# nothing (no message, unknown recipient or failed login counted; no block made).
POLICY_DRYRUN_SUBJECT = f"{POLICY_PREFIX}.dryrun"
# A DATA query whose message policy scans (antispam.spamd) carries the message as its
# payload and the query, as JSON, in this header.
POLICY_QUERY_HEADER = "Mailbus-Policy-Query"
# The nats-server's max_payload wherever mailbus runs it (embedded_nats.py,
# deploy/nats/nats-server.conf, deploy/k8s/nats.yaml); a message to scan fits in one
# NATS message with room left for the query and the headers.
BUS_MAX_PAYLOAD = 8 * 1024 * 1024
MAX_SCAN_SIZE = BUS_MAX_PAYLOAD - 64 * 1024


def policy_subject(stage: str) -> str:
    if stage not in POLICY_STAGES:
        raise ValueError(f"unknown policy stage {stage!r}")
    return f"{POLICY_PREFIX}.{stage}"


# The event log: every event of every message, one subject per message and type,
# so a message's history is one filtered read and consumers can filter by type.
# The last token is the message's queue partition (QUEUE_PARTITIONS, below): each
# queue replica reads only the partitions it owns. It comes last so that one filter,
# `mailbus.evt.<qid>.>`, still reads a message's whole history across both shapes:
# the events a version before partitions wrote (`mailbus.evt.<qid>.<type>`, no
# partition token) and the ones written since.
EVENTS_STREAM = "MAILBUS_EVENTS"
EVENTS_PREFIX = f"{PREFIX}.evt"
EVENTS_SUBJECTS = f"{EVENTS_PREFIX}.>"

# How many partitions the queue's messages hash to. Every publisher of an event or a
# timer must agree on it, so it is part of the wire contract, not a setting: changing
# it would move messages between partitions under a running queue. 16 lets up to 16
# queue replicas share the work; each partition costs a replica two idle fetch loops.
QUEUE_PARTITIONS = 16


def partition_of(queue_id: str) -> int:
    """The queue partition of a message: FNV-1a (32 bits) of its id, modulo P.

    Stable across processes and versions (unlike Python's `hash`, which is salted)."""
    value = 0x811C9DC5
    for byte in queue_id.encode():
        value = ((value ^ byte) * 0x01000193) & 0xFFFFFFFF
    return value % QUEUE_PARTITIONS


def event_subject(queue_id: str, event_type: str) -> str:
    return f"{EVENTS_PREFIX}.{queue_id}.{event_type}.{partition_of(queue_id)}"


def message_events_filter(queue_id: str) -> str:
    """Every event of one message, whether written with a partition token or before."""
    return f"{EVENTS_PREFIX}.{queue_id}.>"


def events_of_type(event_type: str, partition: int | None = None) -> str:
    """Events of one type: of every partition, or of one."""
    where = "*" if partition is None else str(partition)
    return f"{EVENTS_PREFIX}.*.{event_type}.{where}"


def legacy_events_of_type(event_type: str) -> str:
    """Events of one type as a version before partitions wrote them (no partition
    token): what consumers still read after an upgrade until it is all processed."""
    return f"{EVENTS_PREFIX}.*.{event_type}"


# Every event in the new shape, and in the one before partitions.
MESSAGE_EVENTS = f"{EVENTS_PREFIX}.*.*.*"
LEGACY_MESSAGE_EVENTS = f"{EVENTS_PREFIX}.*.*"

# The queue's fencing epochs: each new holder of a partition's lease appends one marker
# on its partition's subject, and every event the queue publishes for a message of that
# partition expects it to be the last one there, so a deposed holder's writes fail
# (runtime/fence.py). `mailbus.evt.queue-epoch.<p>` is no message's history (no queue
# id reads `queue-epoch`) and has no event type in third place, so no event filter
# sees it. QUEUE_EPOCH_SUBJECT is the single epoch of the versions before partitions;
# a new queue appends a marker there too, so an old one still running is fenced off.
QUEUE_EPOCH_SUBJECT = f"{EVENTS_PREFIX}.queue-epoch"


def queue_epoch_subject(partition: int) -> str:
    return f"{QUEUE_EPOCH_SUBJECT}.{partition}"


QUEUE_EPOCH_SUBJECTS = f"{QUEUE_EPOCH_SUBJECT}.*"


# Delivery jobs: a work queue, one subject token per destination so that
# per-destination concurrency can be applied later without re-plumbing.
JOBS_STREAM = "MAILBUS_JOBS"
JOBS_PREFIX = f"{PREFIX}.job.deliver"
JOBS_SUBJECTS = f"{JOBS_PREFIX}.>"


def job_subject(destination: str) -> str:
    return f"{JOBS_PREFIX}.{token(destination)}"


# Durable timers (retry, delay warning, expiry) use JetStream message schedules.
# Like events, their subjects end in the message's partition (none before partitions).
TIMERS_STREAM = "MAILBUS_TIMERS"
TIMERS_PREFIX = f"{PREFIX}.timer"
TIMERS_SUBJECTS = f"{TIMERS_PREFIX}.>"
# The queue publishes one schedule per message and kind on `.sched.`; the server
# publishes it to `.fire.` when due, into the same stream.
TIMER_FIRES = f"{TIMERS_PREFIX}.fire.>"
# Fired timers the versions before partitions scheduled: `fire.<qid>.<kind>`.
LEGACY_TIMER_FIRES = f"{TIMERS_PREFIX}.fire.*.*"


def timer_fires_of(partition: int) -> str:
    return f"{TIMERS_PREFIX}.fire.*.*.{partition}"


def timer_schedule_subject(queue_id: str, kind: str) -> str:
    return f"{TIMERS_PREFIX}.sched.{queue_id}.{kind}.{partition_of(queue_id)}"


def timer_fire_subject(queue_id: str, kind: str) -> str:
    return f"{TIMERS_PREFIX}.fire.{queue_id}.{kind}.{partition_of(queue_id)}"


def message_timers_filter(queue_id: str) -> str:
    """Every schedule and fired timer of one message, of both shapes (to purge them
    when it leaves)."""
    return f"{TIMERS_PREFIX}.*.{queue_id}.>"


# Request/reply: `mailbus queue ...` asks the queue service (a nats.micro endpoint group).
QUEUE_API_PREFIX = f"{PREFIX}.queue.v1"
QUEUE_API_OPS = ("list", "show", "retry", "hold", "release", "delete")


def queue_api_subject(op: str) -> str:
    """Every queue replica hears every request: `list` is answered by each for the
    partitions it owns, an operation on one message by its partition's owner alone."""
    if op not in QUEUE_API_OPS:
        raise ValueError(f"unknown queue operation {op!r}")
    return f"{QUEUE_API_PREFIX}.{op}"


# Message bodies: a stream with one subject per queue id (libs/common/mail/bodies.py),
# read by direct get and purged on completion; `<qid>.h` is the head, `<qid>.<n>` the
# chunks of a body larger than one NATS message.
BODIES_STREAM = "MAILBUS_BODIES"
BODIES_PREFIX = f"{PREFIX}.body"
BODIES_SUBJECTS = f"{BODIES_PREFIX}.>"


def body_subjects(queue_id: str) -> str:
    """Every subject of one body: what a purge filters on."""
    return f"{BODIES_PREFIX}.{queue_id}.>"


def body_head_subject(queue_id: str) -> str:
    return f"{BODIES_PREFIX}.{queue_id}.h"


def body_chunk_subject(queue_id: str, index: int) -> str:
    return f"{BODIES_PREFIX}.{queue_id}.{index}"


# KV buckets for state that must hold across replicas.
POLICY_COUNTERS_BUCKET = "mailbus-policy-counters"
# POP3-before-SMTP grants, keyed by token(client address); each key carries its own TTL.
POP3_GRANTS_BUCKET = "mailbus-pop3-grants"
# Failed SMTP AUTH logins per client address, keyed by token(client address); a key
# expires one window after the last failure (per-key TTL), so no count lingers forever.
AUTH_FAILURES_BUCKET = "mailbus-auth-failures"
# Open SMTP and POP3 connections, as ingress versions before the connection reports
# counted them: one key per connection, `<token(ip)>.<token(instance)>.<session>`, with
# a short per-key TTL. Kept for a rolling upgrade (old ingress instances still write
# it, policy still counts it for them); nothing new writes it.
CONNECTIONS_BUCKET = "mailbus-connections"
# Open connections now: each ingress instance publishes its table on core NATS
# (contract.policy.ConnectionReport, nothing stored) and every policy replica keeps a
# copy; a new policy replica says hello and every instance answers with its table.
CONNECTIONS_REPORT_SUBJECT = f"{PREFIX}.connections.v1.report"
CONNECTIONS_HELLO_SUBJECT = f"{PREFIX}.connections.v1.hello"
# Clients blocked by a limit (directory harvest), keyed by token(client address);
# a key expires a little after its block ends.
BLOCKS_BUCKET = "mailbus-blocks"


# The queue's single-writer leases (libs/common/runtime/lease.py): one key per partition,
# held by the one queue replica that decides for that partition's messages; and one key
# per live replica (with a short TTL), from which each reckons its fair share.
# QUEUE_LEADER_KEY is the single lease of the versions before partitions.
QUEUE_LEADER_BUCKET = "mailbus-queue-leader"
QUEUE_LEADER_KEY = "queue"
QUEUE_MEMBER_PREFIX = "member."


def queue_partition_key(partition: int) -> str:
    return f"{QUEUE_LEADER_KEY}.{partition}"


def queue_member_key(instance: str) -> str:
    return f"{QUEUE_MEMBER_PREFIX}{token(instance)}"


# Delivery claims (services/delivery/adapters/claims.py): one key per job id, written by
# the worker sending it with a per-key TTL a little above the jobs' ack_wait, so a
# second worker handed the same job at once does not send it too.
DELIVERY_CLAIMS_BUCKET = "mailbus-delivery-claims"


# Configuration revisions (libs/common/runtime/liveconfig.py): the active revision and
# a shadow one under two keys; the bucket's sequence is the revision number, and its
# history keeps the last CONFIG_HISTORY versions of each key for `config rollback`.
CONFIG_BUCKET = "mailbus-config"
CONFIG_ACTIVE_KEY = "active"
CONFIG_SHADOW_KEY = "shadow"
CONFIG_HISTORY = 64
# Every replica of every service answers here (no queue group) with the revision it
# runs: `mailbus config status`, and `config apply` waiting until all have it.
CONFIG_STATUS_SUBJECT = f"{PREFIX}.config.v1.status"

# Where policy records each decision on which the shadow revision differs from the
# active one, per shadow revision and stage, for `mailbus config shadow-report`.
SHADOW_STREAM = "MAILBUS_SHADOW"
SHADOW_PREFIX = f"{PREFIX}.shadow"
SHADOW_SUBJECTS = f"{SHADOW_PREFIX}.>"


def shadow_subject(revision: int, stage: str) -> str:
    return f"{SHADOW_PREFIX}.{revision}.{stage}"


def shadow_filter(revision: int) -> str:
    return f"{SHADOW_PREFIX}.{revision}.*"


def connection_lease_key(client_ip: str, instance: str, session_id: str) -> str:
    """`client_ip` canonical (policy_api.canonical_ip); `session_id` a valid key token."""
    return f"{token(client_ip)}.{token(instance)}.{session_id}"


def connection_leases_filter(client_ip: str) -> str:
    """Every lease of one client address, as a subject filter on the bucket's stream."""
    return f"$KV.{CONNECTIONS_BUCKET}.{token(client_ip)}.>"


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def kv_subject(bucket: str, key: str) -> str:
    return f"$KV.{bucket}.{key}"


# Keys of POLICY_COUNTERS_BUCKET: accepted messages and unknown local recipients per
# client address, each a sliding window of per-slot counts.
def message_count_key(client_ip: str) -> str:
    return f"messages.{token(client_ip)}"


def unknown_recipients_key(client_ip: str) -> str:
    return f"unknown-rcpts.{token(client_ip)}"


# Request/reply: `mailbus blocks list|remove` asks policy (nats.micro endpoints).
BLOCKS_API_PREFIX = f"{PREFIX}.blocks.v1"
BLOCKS_API_OPS = ("list", "remove")


def blocks_api_subject(op: str) -> str:
    if op not in BLOCKS_API_OPS:
        raise ValueError(f"unknown blocks operation {op!r}")
    return f"{BLOCKS_API_PREFIX}.{op}"


# Access events: logins and other session facts that belong to no message
# (Pop3LoginSucceeded, ...), one subject per event type.
ACCESS_STREAM = "MAILBUS_ACCESS"
ACCESS_PREFIX = f"{PREFIX}.access"
ACCESS_SUBJECTS = f"{ACCESS_PREFIX}.>"


def access_subject(event_type: str) -> str:
    return f"{ACCESS_PREFIX}.{event_type}"


# Local mailboxes (mailboxes.store: jetstream). One subject per mailbox holds its
# index entries, small JSON records in arrival order; the messages themselves are
# objects in MAILBOX_BODIES_BUCKET, since a message may exceed the NATS payload limit.
MAILBOXES_STREAM = "MAILBUS_MAILBOXES"
MAILBOXES_PREFIX = f"{PREFIX}.mbox"
MAILBOXES_SUBJECTS = f"{MAILBOXES_PREFIX}.>"
MAILBOX_BODIES_BUCKET = "mailbus-mailbox-bodies"


def mailbox_subject(address: str) -> str:
    """Keyed by the lower-cased account address, as the policy directory compares them."""
    return f"{MAILBOXES_PREFIX}.{token(address.lower())}"


# POP3 sessions lock their mailbox: one message per mailbox subject, written with an
# expected last sequence (so only one session can take it) and a TTL (so a crashed
# ingress frees it), deleted by sequence at the end of the session.
MAILBOX_LOCKS_STREAM = "MAILBUS_MAILBOX_LOCKS"
MAILBOX_LOCKS_PREFIX = f"{PREFIX}.mboxlock"
MAILBOX_LOCKS_SUBJECTS = f"{MAILBOX_LOCKS_PREFIX}.>"


def mailbox_lock_subject(address: str) -> str:
    return f"{MAILBOX_LOCKS_PREFIX}.{token(address.lower())}"


# Durable consumer names. The queue has two per partition (its events, its fired
# timers); QUEUE_CONSUMER and QUEUE_TIMERS_CONSUMER are those of the versions before
# partitions, kept (with filters narrowed to the old subject shape) so that what they
# had not yet processed at the upgrade still is.
QUEUE_CONSUMER = "queue"
QUEUE_TIMERS_CONSUMER = "queue-timers"


def queue_consumer(partition: int) -> str:
    return f"{QUEUE_CONSUMER}-p{partition}"


def queue_timers_consumer(partition: int) -> str:
    return f"{QUEUE_TIMERS_CONSUMER}-p{partition}"


DELIVERY_CONSUMER = "delivery"
NOTIFIER_CONSUMER = "notifier"
# Shared by every policy replica: each POP3 login is turned into a grant once.
POLICY_GRANTS_CONSUMER = "policy-pop3-grants"

# The durable consumers each service reads, for its consumer-lag metrics.
SERVICE_CONSUMERS: dict[str, tuple[tuple[str, str], ...]] = {
    "policy": ((ACCESS_STREAM, POLICY_GRANTS_CONSUMER),),
    "queue": (
        *((EVENTS_STREAM, queue_consumer(p)) for p in range(QUEUE_PARTITIONS)),
        *((TIMERS_STREAM, queue_timers_consumer(p)) for p in range(QUEUE_PARTITIONS)),
        (EVENTS_STREAM, QUEUE_CONSUMER),
        (TIMERS_STREAM, QUEUE_TIMERS_CONSUMER),
    ),
    "delivery": ((JOBS_STREAM, DELIVERY_CONSUMER),),
    "notifier": ((EVENTS_STREAM, NOTIFIER_CONSUMER),),
}

# Each service answers $SRV.PING/INFO under this name (nats.micro).
SERVICES = ("ingress", "policy", "queue", "delivery", "notifier")


def service_name(service: str) -> str:
    return f"{PREFIX}-{service}"


def inbox_prefix(connection_name: str) -> str:
    """Reply subjects of one connection kind: `_INBOX_mailbus-ingress.<nuid>...`."""
    return f"_INBOX_{connection_name}"


def token(value: str) -> str:
    """Encode an arbitrary string (a domain has dots) as one subject token.

    Unpadded URL-safe base64 keeps it reversible and free of '.', '*', '>' and spaces.
    """
    return base64.urlsafe_b64encode(value.encode()).decode().rstrip("=") or "_"


# Subjects whose third token (or fourth, for timers) is a queue id or another
# per-message value, and the placeholder that replaces it in span names.
_VARIABLE_TOKENS: dict[tuple[str, ...], tuple[int, str]] = {
    (PREFIX, "evt"): (2, "{queue_id}"),
    (PREFIX, "body"): (2, "{queue_id}"),
    (PREFIX, "job"): (2, "{destination}"),
    (PREFIX, "timer", "sched"): (3, "{queue_id}"),
    (PREFIX, "timer", "fire"): (3, "{queue_id}"),
}


def subject_template(subject: str) -> tuple[str, str | None]:
    """The subject with its per-message token replaced, and the queue id if it had one.

    Span names use the template (`publish mailbus.evt.{queue_id}.MessageReceived`), so a
    tracing backend gets a bounded set of operation names, not one per message.
    """
    tokens = subject.split(".")
    for prefix, (index, placeholder) in _VARIABLE_TOKENS.items():
        if tuple(tokens[: len(prefix)]) == prefix and len(tokens) > index:
            value = tokens[index]
            tokens[index] = placeholder
            queue_id = value if placeholder == "{queue_id}" else None
            # A body's last token is its chunk number: not part of the template.
            keep = index + 1 if prefix == (PREFIX, "body") else index + 2
            return ".".join(tokens[:keep]), queue_id
    if subject.startswith("$KV."):
        return ".".join(tokens[:2]), None
    return subject, None
