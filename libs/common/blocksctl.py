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
import getpass
import json
import sys
from collections.abc import Sequence
from typing import Any

from libs.common import subjects

DEFAULT_URL = "nats://127.0.0.1:4222"
HISTORY_TYPES = ("ClientBlocked", "ClientUnblocked")
HISTORY_LIMIT = 10_000


def add_parser(sub: Any) -> None:
    """Adds `blocks` and its subcommands to the `mailbus` parser."""
    p_blocks = sub.add_parser("blocks", help="client addresses blocked by the security limits")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nats-url", action="append", default=None, help="repeatable")
    common.add_argument("--config", default=None, help="take nats.url and credentials from FILE")
    common.add_argument("--timeout", type=float, default=15.0, help="seconds to wait for policy")
    ops = p_blocks.add_subparsers(dest="blocks_command", required=True)
    p = ops.add_parser("list", parents=[common], help="blocks in force (or every one, --history)")
    p.add_argument("--json", action="store_true")
    p.add_argument("--history", action="store_true", help="blocks made and lifted, from events")
    p = ops.add_parser("remove", parents=[common], help="lift the block of an address")
    p.add_argument("address")
    p_blocks.set_defaults(func=blocks_command)


def blocks_command(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


def _servers(args: argparse.Namespace) -> tuple[list[str], str | None]:
    if args.nats_url:
        return list(args.nats_url), None
    if args.config:
        from libs.common.config import load_config

        config = load_config(args.config)
        return list(config.nats.url) or [DEFAULT_URL], config.nats.credentials_file
    return [DEFAULT_URL], None


async def _run(args: argparse.Namespace) -> int:
    from libs.common import bus

    op = args.blocks_command
    servers, credentials = _servers(args)
    try:
        nc = await bus.connect(servers, name="mailbus-blocksctl", credentials_file=credentials)
    except Exception as exc:
        print(f"mailbus blocks {op}: cannot reach NATS: {exc!r}", file=sys.stderr)
        return 2
    try:
        if op == "list" and args.history:
            events = await read_history(nc.jetstream())
            print(json.dumps(events, indent=2) if args.json else format_history(events))
            return 0
        body: dict[str, Any] = {}
        if op == "remove":
            body = {"address": args.address, "operator": _operator()}
        try:
            msg = await nc.request(
                subjects.blocks_api_subject(op), json.dumps(body).encode(), timeout=args.timeout
            )
        except Exception as exc:  # no responders, time-out
            print(f"mailbus blocks {op}: policy does not answer: {exc!r}", file=sys.stderr)
            return 2
    finally:
        await nc.close()
    reply: dict[str, Any] = json.loads(msg.data)
    if "error" in reply:
        print(f"mailbus blocks {op}: {reply['error']}", file=sys.stderr)
        return 1
    if op == "list":
        blocks = reply["blocks"]
        print(json.dumps(blocks, indent=2) if args.json else format_blocks(blocks))
    else:
        print(format_removed(reply))
    return 0


async def read_history(js: Any) -> list[dict[str, Any]]:
    """Every ClientBlocked / ClientUnblocked event still in the stream, oldest first."""
    from nats.js.errors import NotFoundError

    events: list[dict[str, Any]] = []
    for kind in HISTORY_TYPES:
        seq = 1
        for _ in range(HISTORY_LIMIT):
            try:
                raw = await js.get_msg(
                    subjects.ACCESS_STREAM,
                    seq=seq,
                    subject=subjects.access_subject(kind),
                    next=True,
                )
            except NotFoundError:
                break
            events.append(json.loads(raw.data))
            seq = raw.seq + 1
    return sorted(events, key=lambda e: str(e.get("occurred_at", "")))


def _operator() -> str:
    try:
        return getpass.getuser()
    except Exception:
        return ""


def _time(value: str | None) -> str:
    return value.replace("T", " ")[:19] if value else "-"


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
