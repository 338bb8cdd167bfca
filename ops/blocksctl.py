"""`mailbus blocks list|remove`: the client addresses policy has blocked, and lifting a block.

`list` and `remove` ask the running policy service over the bus
(request/reply on `subjects.blocks_api_subject(op)`): policy owns the block
format and records a lifted block as a ClientUnblocked event. `list
--history` reads the ClientBlocked / ClientUnblocked events themselves from
MAILBUS_ACCESS, so it also shows blocks that ended long ago (as far back as the
stream keeps them).
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from typing import Any

from libs.common.contract import subjects
from ops import ctl
from ops.ctl import time_text as _time

HISTORY_TYPES = ("ClientBlocked", "ClientUnblocked")
HISTORY_LIMIT = 10_000


def add_parser(sub: Any) -> None:
    """Adds `blocks` and its subcommands to the `mailbus` parser."""
    p_blocks = sub.add_parser("blocks", help="client addresses blocked by the security limits")
    common = ctl.connection_options("policy")
    ops = p_blocks.add_subparsers(dest="blocks_command", required=True)
    p = ops.add_parser("list", parents=[common], help="blocks in force (or every one, --history)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--history", action="store_true", help="blocks made and lifted, from events")
    p = ops.add_parser("remove", parents=[common], help="lift the block of an address")
    p.add_argument("address")
    p_blocks.set_defaults(func=blocks_command)


def blocks_command(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    op = args.blocks_command
    try:
        async with ctl.connection(args, "mailbus-blocksctl") as nc:
            if op == "list" and args.history:
                events = await read_history(nc.jetstream())
                print(json.dumps(events, indent=2) if args.json else format_history(events))
                return 0
            body: dict[str, Any] = {}
            if op == "remove":
                body = {"address": args.address, "operator": ctl.operator()}
            subject = subjects.blocks_api_subject(op)
            reply = await ctl.request(nc, subject, body, args.timeout, "policy")
    except ctl.CtlError as exc:
        return ctl.report(f"mailbus blocks {op}", exc)
    if op == "list":
        blocks = reply["blocks"]
        print(json.dumps(blocks, indent=2) if args.json else format_blocks(blocks))
    else:
        print(format_removed(reply))
    return 0


async def read_history(js: Any) -> list[dict[str, Any]]:
    """Every ClientBlocked / ClientUnblocked event still in the stream, oldest first."""
    from libs.common.mail.history import by_subject

    events: list[dict[str, Any]] = []
    for kind in HISTORY_TYPES:
        subject = subjects.access_subject(kind)
        async for raw in by_subject(js, subjects.ACCESS_STREAM, subject, HISTORY_LIMIT):
            if raw.data:
                events.append(json.loads(raw.data))
    return sorted(events, key=lambda e: str(e.get("occurred_at", "")))


def format_blocks(blocks: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'ADDRESS':<39}  {'SINCE':<19}  {'UNTIL':<19}  REASON"]
    for b in blocks:
        lines.append(
            f"{b['address']:<39}  {_time(b['start']):<19}  {_time(b['end']):<19}  {b['reason']}"
        )
    lines.append(f"-- {len(blocks)} blocked address(es)")
    return "\n".join(lines)


def format_history(events: Sequence[dict[str, Any]]) -> str:
    lines = []
    for e in events:
        if e.get("type") == "ClientBlocked":
            lines.append(
                f"{_time(e['start'])}  blocked  {e['client_ip']} until {_time(e['end'])}: "
                f"{e['reason']} ({e['rule']})"
            )
        else:
            lines.append(
                f"{_time(e['occurred_at'])}  lifted   {e['client_ip']} "
                f"by {e.get('operator') or '?'}"
            )
    lines.append(f"-- {len(events)} event(s)")
    return "\n".join(lines)


def format_removed(reply: dict[str, Any]) -> str:
    removed = reply.get("removed")
    if removed is None:
        return f"{reply['address']} was not blocked"
    return (
        f"{reply['address']}: block lifted (was until {_time(removed['end'])}: {removed['reason']})"
    )
