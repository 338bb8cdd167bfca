"""`mailbus queue list|show|cat|retry|hold|release|delete`: the operator's view of the queue.

Like postqueue, postsuper and postcat, but it asks the running queue service over
the bus (request/reply on `subjects.queue_api_subject(op)`), so it works from any
host that reaches NATS. The queue runs as replicas that share its partitions: `list`
gathers the answers of all of them until every partition is covered (and says which
did not answer in time); a request about one message is answered by its owner.
Actions take several ids, ALL, or `-` (ids on stdin), as postsuper does;
`list --json` prints one JSON object per line, for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, TextIO

from libs.common.config.units import parse_duration
from libs.common.contract import subjects
from libs.common.contract.antispam import AntispamResults
from ops import ctl
from ops.ctl import time_text as _time

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS


ACTIONS = {
    "retry": "attempt deferred recipients now",
    "hold": "no more attempts until released",
    "release": "end a hold; attempt at once",
    "delete": "remove from the queue, without a report",
}
# With ALL, which messages each action takes (postsuper -r/-h/-H/-d ALL).
_ALL_STATES: dict[str, tuple[str, ...]] = {
    "retry": ("deferred",),
    "hold": ("active", "deferred"),
    "release": ("held",),
    "delete": ("active", "deferred", "held"),
}


def add_parser(sub: Any) -> None:
    """Adds `queue` and its subcommands to the `mailbus` parser."""
    p_queue = sub.add_parser("queue", help="look at and act on the delivery queue")
    common = ctl.connection_options("the queue")
    ops = p_queue.add_subparsers(dest="queue_command", required=True)

    p = ops.add_parser("list", parents=[common], help="messages in the queue (mailq)")
    p.add_argument("--sender", help="sender contains this (or matches this *-pattern)")
    p.add_argument("--recipient", help="a waiting recipient contains (or matches) this")
    p.add_argument("--state", choices=("active", "deferred", "held"))
    p.add_argument("--older-than", metavar="AGE", help="in the queue longer than AGE (90s, 4h, 2d)")
    p.add_argument("--json", action="store_true", help="one JSON object per message and line")
    p = ops.add_parser("show", parents=[common], help="a message's whole event history")
    p.add_argument("queue_id")
    p.add_argument("--json", action="store_true")
    p = ops.add_parser("cat", parents=[common], help="the stored message (postcat -q)")
    p.add_argument("queue_id")
    for name, text in ACTIONS.items():
        p = ops.add_parser(name, parents=[common], help=text)
        p.add_argument(
            "queue_ids",
            nargs="*",
            metavar="ID",
            help="queue ids; ALL: every message; -: from stdin",
        )
        if name == "retry":
            p.add_argument("--all", action="store_true", help="every deferred message (= ALL)")
    p_queue.set_defaults(func=queue_command)


def queue_command(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    op = args.queue_command
    try:
        async with ctl.connection(args, "mailbus-queuectl") as nc:
            if op in ACTIONS:
                return await _act(nc, args, op)
            if op == "cat":
                sys.stdout.buffer.write(await _body(nc, args.queue_id))
                sys.stdout.buffer.flush()
                return 0
            body: dict[str, Any] = {"operator": ctl.operator()}
            if op == "list":
                listed, missing = await gather_list(nc, args.timeout)
            else:
                body["queue_id"] = args.queue_id
                subject = subjects.queue_api_subject(op)
                reply = await ctl.request(nc, subject, body, args.timeout, "the queue service")
    except ctl.CtlError as exc:
        return ctl.report(f"mailbus queue {op}", exc)
    if op == "list":
        entries = select(listed, Selection.of(args), datetime.now(UTC))
        if args.json:
            for entry in entries:
                print(json.dumps(entry, sort_keys=True))
        else:
            print(format_list(entries, datetime.now(UTC)))
        if missing:
            print(f"mailbus queue list: {missing_text(missing)}", file=sys.stderr)
            return 1
    elif args.json:
        print(json.dumps(reply, sort_keys=True))
    else:
        print(format_history(reply))
    return 0


async def _body(nc: NATS, queue_id: str) -> bytes:
    """The stored message as delivery reads it, from the body store."""
    from libs.common.mail.bodies import BodyStore

    try:
        found = await BodyStore(nc.jetstream()).get(queue_id)
    except Exception as exc:
        raise ctl.CtlError(f"{queue_id}: body unreadable: {type(exc).__name__}", 2) from exc
    if found is None:
        raise ctl.CtlError(f"no stored message {queue_id!r}", 1)
    return found


async def gather_list(nc: NATS, wait_s: float) -> tuple[list[dict[str, Any]], list[int]]:
    """Every replica's entries, until each partition is covered or `wait_s` is over;
    and the partitions no replica answered for. A partition two replicas claim (one
    handing it to the other just then) is taken from the first answer only."""
    everything = set(range(subjects.QUEUE_PARTITIONS))
    inbox = nc.new_inbox()
    sub = await nc.subscribe(inbox)
    covered: set[int] = set()
    entries: list[dict[str, Any]] = []
    answered = False
    try:
        await nc.publish(
            subjects.queue_api_subject("list"),
            json.dumps({"operator": ctl.operator()}).encode(),
            reply=inbox,
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while covered != everything and loop.time() < deadline:
            try:
                msg = await sub.next_msg(timeout=max(0.01, deadline - loop.time()))
            except Exception:  # nats' TimeoutError: the rest did not answer
                break
            if not msg.data:  # a status, not an answer: 503, no queue replica listens
                if (msg.headers or {}).get("Status") == "503":
                    break
                continue
            reply: dict[str, Any] = json.loads(msg.data)
            if "error" in reply:
                raise ctl.CtlError(str(reply["error"]), 1)
            answered = True
            fresh = set(reply.get("partitions", everything)) - covered
            covered |= fresh
            entries += [
                e for e in reply["entries"] if subjects.partition_of(e["queue_id"]) in fresh
            ]
    finally:
        await sub.unsubscribe()
    if not answered:
        raise ctl.CtlError("the queue service does not answer", 2)
    return entries, sorted(everything - covered)


def missing_text(missing: Sequence[int]) -> str:
    return (
        f"no queue replica answered for partition(s) {', '.join(map(str, missing))}: "
        "their messages are not listed (a replica down, or one taking them over)"
    )


def target_ids(given: Sequence[str], stdin: TextIO) -> list[str]:
    """The ids named: `-` reads them from stdin, whitespace-separated (postsuper habits)."""
    ids: list[str] = []
    for item in given:
        ids.extend(stdin.read().split() if item == "-" else [item])
    return ids


async def _act(nc: NATS, args: argparse.Namespace, op: str) -> int:
    subject = subjects.queue_api_subject(op)
    ids = target_ids(args.queue_ids, sys.stdin)
    if getattr(args, "all", False):
        ids.append("ALL")
    if not ids:
        raise ctl.CtlError("name queue ids, ALL, or - to read them from stdin", 2)
    failed = 0
    if "ALL" in ids:
        listed, missing = await gather_list(nc, args.timeout)
        if missing:
            print(f"mailbus queue {op}: {missing_text(missing)}", file=sys.stderr)
            failed += 1
        chosen = [e["queue_id"] for e in listed if e["state"] in _ALL_STATES[op]]
        ids = [i for i in ids if i != "ALL"] + chosen
    for qid in dict.fromkeys(ids):  # each once, in the order given
        body = {"operator": ctl.operator(), "queue_id": qid}
        try:
            reply = await ctl.request(nc, subject, body, args.timeout, "the queue service")
        except ctl.CtlError as exc:
            if exc.code == 2:
                raise
            print(f"mailbus queue {op}: {qid}: {exc}", file=sys.stderr)
            failed += 1
            continue
        print(format_result(op, reply))
    return 1 if failed else 0


@dataclass(frozen=True)
class Selection:
    sender: str | None = None
    recipient: str | None = None
    state: str | None = None
    older_than: timedelta | None = None

    @classmethod
    def of(cls, args: argparse.Namespace) -> Selection:
        age = None
        if args.older_than:
            try:
                age = parse_duration(args.older_than)
            except ValueError as exc:
                raise SystemExit(f"mailbus queue list: --older-than: {exc}") from exc
        return cls(args.sender, args.recipient, args.state, age)


def _matches(pattern: str, value: str) -> bool:
    pattern, value = pattern.lower(), value.lower()
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(value, pattern)
    return pattern in value


def select(
    entries: Sequence[dict[str, Any]], sel: Selection, now: datetime
) -> list[dict[str, Any]]:
    """The entries the filters keep, oldest first."""
    kept = []
    for e in entries:
        if sel.sender is not None and not _matches(sel.sender, e["sender"]):
            continue
        if sel.recipient is not None and not any(
            _matches(sel.recipient, r) for r in e["recipients"]
        ):
            continue
        if sel.state is not None and e["state"] != sel.state:
            continue
        if sel.older_than is not None and now - _when(e["arrival"]) < sel.older_than:
            continue
        kept.append(e)
    return sorted(kept, key=lambda e: str(e["arrival"]))


def _when(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def age_text(delta: timedelta) -> str:
    """3m, 2h5m, 1d4h: how long a message has been in the queue."""
    seconds = max(int(delta.total_seconds()), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h" if hours else f"{days}d"
    if hours:
        return f"{hours}h{minutes}m" if minutes else f"{hours}h"
    return f"{minutes}m" if minutes else f"{secs}s"


def format_list(entries: Sequence[dict[str, Any]], now: datetime) -> str:
    lines = [
        f"{'QUEUE ID':<26}  {'ARRIVAL':<19}  {'AGE':>6}  {'SIZE':>8}  {'STATE':<8}  "
        f"{'NEXT ATTEMPT':<19}  SENDER -> RECIPIENTS"
    ]
    for e in entries:
        age = age_text(now - _when(e["arrival"]))
        lines.append(
            f"{e['queue_id']:<26}  {_time(e['arrival']):<19}  {age:>6}  {e['size']:>8}  "
            f"{e['state']:<8}  {_time(e.get('next_attempt')):<19}  <{e['sender']}> -> "
            f"{', '.join(e['recipients'])}"
        )
        reasons: dict[str, str] = e.get("reasons") or {}
        for rcpt in e["recipients"]:
            if rcpt in reasons:
                lines.append(f"{'':<28}{rcpt}: ({reasons[rcpt]})")
        if not reasons and e.get("last_reply"):
            lines.append(f"{'':<28}({e['last_reply']})")
    total = sum(int(e["size"]) for e in entries)
    lines.append(f"-- {len(entries)} message(s), {total} bytes")
    return "\n".join(lines)


def _event_details(e: dict[str, Any]) -> str:
    kind = e["type"]
    if kind == "MessageReceived":
        rcpts = ", ".join(r["address"] for r in e["recipients"])
        found = e.get("antispam")
        checks = f", antispam {AntispamResults.model_validate(found).summary()}" if found else ""
        rules = ", ".join(e.get("policy_rules") or ()) or "-"
        revision = e.get("config_revision")
        under = f" under configuration revision {revision}" if revision is not None else ""
        return (
            f"from <{e['mail_from']}> to {rcpts}, {e['size']} bytes, "
            f"client {e['client']['ip']}{checks}; policy rules {rules}{under}"
        )
    if kind == "DeliveryScheduled":
        dest = e["destination"]
        where = f"{dest['kind']} {dest['domain']}".strip()
        return f"attempt {e['attempt']} job {e['job_id']} via {where}: {', '.join(e['recipients'])}"
    if kind in ("DeliverySucceeded", "DeliveryDeferred", "DeliveryFailed"):
        tls = f" tls={e['tls_version']}" if e.get("tls_version") else ""
        reply = (
            f"{e['reply_code']} {e['reply_text']}".strip() if e["reply_code"] else e["reply_text"]
        )
        return f"{e['recipient']} at {e['remote_host'] or '-'} [{e['status']}]{tls}: {reply}"
    if kind == "DeliveryAttempted":  # a job's results together
        each = ", ".join(
            f"{r['recipient']} {r['outcome']} [{r['status']}]" for r in e.get("results", ())
        )
        return f"job {e['job_id']} at {e['remote_host'] or '-'}: {each}"
    if kind in ("RecipientsFailed", "RecipientsDelivered", "MessageDelayed", "MessageExpired"):
        return ", ".join(f"{o['address']} {o['status']}" for o in e.get("outcomes", ()))
    if kind == "ReportSent":
        return f"{e['kind']} report for {e['trigger_event_id']}: {e.get('report_queue_id') or '-'}"
    if kind == "MessageCompleted":
        delivered, failed = ", ".join(e["delivered"]) or "-", ", ".join(e["failed"]) or "-"
        return f"delivered: {delivered}; failed: {failed}"
    if kind in ("MessageHeld", "MessageReleased", "MessageDeleted"):
        return f"by {e.get('operator') or '?'}"
    return ""


def format_history(reply: dict[str, Any]) -> str:
    lines = [f"queue id {reply['queue_id']}"]
    entry = reply.get("entry")
    lines.append(f"state: {entry['state'] if entry else 'not in the queue'}")
    lines.append(f"trace id: {trace_id(reply['events']) or '-'}")
    for e in reply["events"]:
        lines.append(f"{_time(e['occurred_at'])}  {e['type']:<19}  {_event_details(e)}")
    return "\n".join(lines)


def trace_id(events: Sequence[dict[str, Any]]) -> str | None:
    """The SMTP session's trace (W3C traceparent `00-<trace id>-<span id>-<flags>`),
    to look the message up in Jaeger or any OpenTelemetry backend."""
    for e in events:
        parent = e.get("trace_parent") if e.get("type") == "MessageReceived" else None
        if parent and parent.count("-") == 3:
            return str(parent.split("-")[1])
    return None


def format_result(op: str, reply: dict[str, Any]) -> str:
    if op == "retry":
        retried = reply.get("retried", [])
        return f"retrying {len(retried)} message(s): {' '.join(retried)}".rstrip(": ")
    done = reply.get({"hold": "held", "release": "released", "delete": "deleted"}[op], "")
    note = f" ({reply['note']})" if reply.get("note") else ""
    return f"{op}: {done}{note}"
