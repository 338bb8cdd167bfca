"""`mailbus queue list|show|retry|hold|release|delete`: the operator's view of the queue.

Like postqueue and postsuper, but it asks the running queue service over the bus
(request/reply on `subjects.queue_api_subject(op)`), so it works from any host
that reaches NATS. `--json` prints the service's answer as is, for scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import Any

from libs.common.contract import subjects
from libs.common.contract.antispam import AntispamResults
from ops import ctl
from ops.ctl import time_text as _time


def add_parser(sub: Any) -> None:
    """Adds `queue` and its subcommands to the `mailbus` parser."""
    p_queue = sub.add_parser("queue", help="look at and act on the delivery queue")
    common = ctl.connection_options("the queue")
    ops = p_queue.add_subparsers(dest="queue_command", required=True)

    p = ops.add_parser("list", parents=[common], help="messages in the queue")
    p.add_argument("--json", action="store_true")
    p = ops.add_parser("show", parents=[common], help="a message's whole event history")
    p.add_argument("queue_id")
    p.add_argument("--json", action="store_true")
    p = ops.add_parser("retry", parents=[common], help="attempt deferred recipients now")
    target = p.add_mutually_exclusive_group(required=True)
    target.add_argument("queue_id", nargs="?")
    target.add_argument("--all", action="store_true", help="every deferred message")
    for name, text in (
        ("hold", "no more attempts until released"),
        ("release", "end a hold; attempt at once"),
        ("delete", "remove from the queue, without a report"),
    ):
        p = ops.add_parser(name, parents=[common], help=text)
        p.add_argument("queue_id")
    p_queue.set_defaults(func=queue_command)


def queue_command(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    op = args.queue_command
    body: dict[str, Any] = {"operator": ctl.operator()}
    if getattr(args, "queue_id", None):
        body["queue_id"] = args.queue_id
    if getattr(args, "all", False):
        body["all"] = True
    try:
        async with ctl.connection(args, "mailbus-queuectl") as nc:
            subject = subjects.queue_api_subject(op)
            reply = await ctl.request(nc, subject, body, args.timeout, "the queue service")
    except ctl.CtlError as exc:
        return ctl.report(f"mailbus queue {op}", exc)
    if getattr(args, "json", False):
        print(json.dumps(reply.get("entries", reply), indent=2, sort_keys=True))
    elif op == "list":
        print(format_list(reply["entries"]))
    elif op == "show":
        print(format_history(reply))
    else:
        print(format_result(op, reply))
    return 0


def format_list(entries: Sequence[dict[str, Any]]) -> str:
    lines = [
        f"{'QUEUE ID':<26}  {'ARRIVAL':<19}  {'SIZE':>8}  {'STATE':<8}  {'NEXT ATTEMPT':<19}  "
        "SENDER -> RECIPIENTS"
    ]
    for e in entries:
        lines.append(
            f"{e['queue_id']:<26}  {_time(e['arrival']):<19}  {e['size']:>8}  {e['state']:<8}  "
            f"{_time(e.get('next_attempt')):<19}  <{e['sender']}> -> {', '.join(e['recipients'])}"
        )
        if e.get("last_reply"):
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
