"""`mailbus config apply|history|diff|rollback|status|shadow-report|promote`.

Revisions live in the KV bucket `mailbus-config` (libs/common/runtime/liveconfig.py);
every replica of every service follows the key `active`, and policy also
evaluates `shadow`. `apply` validates exactly as `config check` (the same
loader, the same lines) and publishes nothing invalid; then it waits until every
running replica reports the new revision, so when it returns, new sessions
everywhere run it. What cannot change live is named in its output.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS
from nats.js import JetStreamContext
from nats.js.errors import BucketNotFoundError

from libs.common.config import Config, ConfigError, load_config_text
from libs.common.config.cli import EXIT_INVALID, checked
from libs.common.config.revisions import Action, Revision, diff, restart_only, summary
from libs.common.contract import subjects
from libs.common.contract.shadow import ShadowDifference, ShadowReport, summarise
from libs.common.runtime import liveconfig
from ops import ctl
from ops.ctl import time_text as _time

SHADOW_LIMIT = 100_000
POLL_S = 0.1


def add_parser(cfg_sub: Any) -> None:
    """Adds the revision subcommands to `mailbus config`."""
    common = ctl.connection_options("every replica")
    p = cfg_sub.add_parser(
        "apply", parents=[common], help="validate FILE as `check` does and make it the revision"
    )
    p.add_argument("file")
    p.add_argument(
        "--shadow", action="store_true", help="evaluate beside the active revision, enforce none"
    )
    p.set_defaults(func=config_command, config_op="apply")
    p = cfg_sub.add_parser("history", parents=[common], help="the revisions the bus still keeps")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=config_command, config_op="history")
    p = cfg_sub.add_parser("diff", parents=[common], help="what revision B changes against A")
    p.add_argument("a", type=int)
    p.add_argument("b", type=int)
    p.set_defaults(func=config_command, config_op="diff")
    p = cfg_sub.add_parser("rollback", parents=[common], help="make revision REV active again")
    p.add_argument("rev", type=int)
    p.set_defaults(func=config_command, config_op="rollback")
    p = cfg_sub.add_parser("status", parents=[common], help="the revision each replica runs")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=config_command, config_op="status")
    p = cfg_sub.add_parser(
        "shadow-report", parents=[common], help="decisions on which the shadow differs"
    )
    p.add_argument("--revision", type=int, default=None, help="default: the current shadow")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=config_command, config_op="shadow-report")
    p = cfg_sub.add_parser("promote", parents=[common], help="make the shadow revision active")
    p.set_defaults(func=config_command, config_op="promote")


def add_status_parser(sub: Any) -> None:
    """`mailbus status`: the same answer as `mailbus config status`, where operators look first."""
    p = sub.add_parser(
        "status", parents=[ctl.connection_options("every replica")], help="each replica's revision"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=config_command, config_op="status")


def config_command(args: argparse.Namespace) -> int:
    op = args.config_op
    if op == "apply":
        # Before any connection: an invalid file is refused exactly as `config check` does.
        if checked(args.file) is None:
            return EXIT_INVALID
    try:
        return asyncio.run(_run(args))
    except ctl.CtlError as exc:
        return ctl.report(f"mailbus config {op}", exc)
    except ConfigError as exc:
        for line in exc.errors:
            print(line, file=sys.stderr)
        return EXIT_INVALID


async def _run(args: argparse.Namespace) -> int:
    async with ctl.connection(args, "mailbus-configctl") as nc:
        js = nc.jetstream()
        # The bucket is the topology's (`mailbus migrate`, or any service's first start).
        try:
            await js.key_value(subjects.CONFIG_BUCKET)
        except BucketNotFoundError:
            raise ctl.CtlError(
                f"no bucket {subjects.CONFIG_BUCKET}: run `mailbus migrate` first", 1
            ) from None
        op = args.config_op
        if op == "apply":
            key = subjects.CONFIG_SHADOW_KEY if args.shadow else subjects.CONFIG_ACTIVE_KEY
            action: Action = "shadow" if args.shadow else "apply"
            number = await publish_file(js, args.file, action, key)
            return await _settle(nc, number, shadow=args.shadow, wait_s=args.timeout)
        if op == "history":
            return await _history(js, args.json)
        if op == "diff":
            return await _diff(js, args.a, args.b)
        if op == "rollback":
            return await _rollback(nc, js, args.rev, args.timeout)
        if op == "status":
            found = await liveconfig.replicas(nc)
            print(json.dumps(found, indent=2) if args.json else format_status(found))
            return 0
        if op == "shadow-report":
            report = await shadow_report(js, args.revision)
            print(report.model_dump_json(indent=2) if args.json else format_report(report))
            return 0
        return await _promote(nc, js, args.timeout)


def who() -> str:
    return f"{ctl.operator() or '?'}@{socket.gethostname()}"


async def _active_config(js: JetStreamContext) -> tuple[int, Config | None]:
    current = await liveconfig.read(js)
    if current is None:
        return 0, None
    try:
        return current[0], current[1].load()
    except ConfigError:
        return current[0], None  # the running one no longer loads here: diff against nothing


def _read(path: str) -> tuple[Config, str, Path]:
    # Validated again from the very text published, as `check` would read it.
    file = Path(path).resolve()
    text = file.read_text(encoding="utf-8")
    return load_config_text(text, source=path, base_dir=file.parent), text, file


async def publish_file(
    js: JetStreamContext,
    path: str,
    action: Action,
    key: str = subjects.CONFIG_ACTIVE_KEY,
) -> int:
    """Publish the file at path as a new revision; ConfigError if it is not valid."""
    config, text, file = await asyncio.to_thread(_read, path)
    _, old = await _active_config(js)
    changes = diff(old, config)
    record = Revision(
        text=text,
        source=str(file),
        base_dir=str(file.parent),
        applied_at=datetime.now(UTC),
        applied_by=who(),
        action=action,
        summary=summary(changes),
    )
    number = await liveconfig.publish(js, record, key)
    where = "shadow" if key == subjects.CONFIG_SHADOW_KEY else "active"
    print(f"revision {number} ({where}): {record.summary}")
    for changed, why in restart_only(changes):
        print(f"  {changed}: applied at the next restart ({why})")
    return number


async def _settle(nc: NATS, number: int, shadow: bool, wait_s: float) -> int:
    """Wait until every replica that answers runs `number` (or refused it)."""
    deadline = time.monotonic() + wait_s
    field = "shadow" if shadow else "revision"
    while True:
        found = await liveconfig.replicas(nc, wait_s=0.3)
        if shadow:
            found = [r for r in found if r.get("service") == "policy"]
        late = [
            r for r in found if int(str(r.get(field, 0))) < number and r.get("failed") != number
        ]
        if not late or time.monotonic() > deadline:
            break
        await asyncio.sleep(POLL_S)
    if not found:
        print("no replica answered; each service applies the revision when it starts")
        return 0
    print(format_status(found))
    refused = [r for r in found if r.get("failed") == number]
    if refused or late:
        print(
            f"revision {number}: {len(refused)} replica(s) refused it, {len(late)} did not "
            "report it in time; they run their previous revision",
            file=sys.stderr,
        )
        return 1
    return 0


async def _history(js: JetStreamContext, as_json: bool) -> int:
    items = await liveconfig.history(js)
    current = await liveconfig.read(js)
    active = current[0] if current else 0
    if as_json:
        rows = [{"revision": n, "key": k, **r.model_dump(mode="json")} for n, k, r in items]
        for row in rows:
            row.pop("text")
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'REV':>5}  {'APPLIED':<19}  {'KEY':<6}  {'ACTION':<8}  {'BY':<24}  CHANGED")
    for number, key, record in items:
        mark = "*" if number == active else " "
        action = record.action + (f" {record.of}" if record.of else "")
        print(
            f"{number:>4}{mark}  {_time(record.applied_at.isoformat())}  {key:<6}  "
            f"{action:<8}  {record.applied_by:<24}  {record.summary}"
        )
    print(f"-- {len(items)} revision(s); * is active")
    return 0


async def _load(js: JetStreamContext, number: int) -> tuple[str, Revision, Config]:
    found = await liveconfig.revision(js, number)
    if found is None:
        raise ctl.CtlError(f"revision {number} is not in the bucket's history", 1)
    key, record = found
    return key, record, record.load()


async def _diff(js: JetStreamContext, a: int, b: int) -> int:
    _, _, old = await _load(js, a)
    _, _, new = await _load(js, b)
    changes = diff(old, new)
    for change in changes:
        print(f"{change.key}: {json.dumps(change.old)} -> {json.dumps(change.new)}")
    print(f"-- {len(changes)} key(s) differ between revisions {a} and {b}")
    return 0


async def _republish(
    nc: NATS, js: JetStreamContext, record: Revision, config: Config, action: Action, of: int
) -> int:
    _, old = await _active_config(js)
    changes = diff(old, config)
    fresh = record.model_copy(
        update={
            "applied_at": datetime.now(UTC),
            "applied_by": who(),
            "action": action,
            "of": of,
            "summary": summary(changes),
        }
    )
    number = await liveconfig.publish(js, fresh)
    print(f"revision {number} (active, {action} of {of}): {fresh.summary}")
    for changed, why in restart_only(changes):
        print(f"  {changed}: applied at the next restart ({why})")
    return number


async def _rollback(nc: NATS, js: JetStreamContext, rev: int, wait_s: float) -> int:
    _, record, config = await _load(js, rev)
    number = await _republish(nc, js, record, config, "rollback", rev)
    return await _settle(nc, number, shadow=False, wait_s=wait_s)


async def _promote(nc: NATS, js: JetStreamContext, wait_s: float) -> int:
    current = await liveconfig.read(js, subjects.CONFIG_SHADOW_KEY)
    if current is None:
        raise ctl.CtlError("no shadow revision to promote (config apply --shadow FILE)", 1)
    shadow_number, record = current
    number = await _republish(nc, js, record, record.load(), "promote", shadow_number)
    await liveconfig.clear_shadow(js)
    return await _settle(nc, number, shadow=False, wait_s=wait_s)


async def shadow_report(js: JetStreamContext, revision: int | None) -> ShadowReport:
    from libs.common.mail.history import by_subject

    if revision is None:
        current = await liveconfig.read(js, subjects.CONFIG_SHADOW_KEY)
        if current is None:
            raise ctl.CtlError("no shadow revision (give --revision N for an earlier one)", 1)
        revision = current[0]
    found: list[ShadowDifference] = []
    subject = subjects.shadow_filter(revision)
    async for raw in by_subject(js, subjects.SHADOW_STREAM, subject, SHADOW_LIMIT):
        if raw.data:
            found.append(ShadowDifference.model_validate_json(raw.data))
    return summarise(revision, found)


def format_report(report: ShadowReport) -> str:
    lines = [
        f"shadow revision {report.shadow_revision}: {report.differences} decision(s) differ; "
        f"{report.would_refuse} it would refuse, {report.would_accept} it would accept",
    ]
    if report.by_stage:
        stages = ", ".join(f"{stage} {n}" for stage, n in report.by_stage.items())
        lines.append(f"by stage: {stages}")
    for kind in report.kinds:
        lines.append(
            f"{kind.count:>6}  {kind.stage:<7}  active {kind.active_rule} -> "
            f"shadow {kind.shadow_rule}"
        )
        for d in kind.examples:
            what = d.rcpt if d.stage == "rcpt" else d.mail_from
            address = f" {json.dumps(what)}" if what is not None else ""
            lines.append(
                f"        {_time(d.at.isoformat())} {d.client_ip}{address}: "
                f"{json.dumps(d.active_reply)} / shadow {json.dumps(d.shadow_reply)}"
            )
    return "\n".join(lines)


def format_status(found: Sequence[dict[str, Any]]) -> str:
    lines = [f"{'SERVICE':<9}  {'INSTANCE':<28}  {'REV':>5}  {'SHADOW':>6}  PROBLEM"]
    for r in found:
        problem = f"refused {r['failed']}: {r['error']}" if r.get("failed") else ""
        lines.append(
            f"{r.get('service', '?')!s:<9}  {r.get('instance', '?')!s:<28}  "
            f"{r.get('revision', 0)!s:>5}  {r.get('shadow') or '-'!s:>6}  {problem}"
        )
    return "\n".join(lines)


async def from_supervisor(urls: Sequence[str], path: str, action: Action) -> int | None:
    """`mailbus up`'s start (revision 1 of a new store) and SIGHUP: publish the file.

    At start, a file identical to the active revision publishes nothing. An invalid
    file is reported line by line and publishes nothing; the services keep running.
    """
    import nats

    nc = await nats.connect(servers=list(urls), name="mailbus-up-config")
    try:
        js = nc.jetstream()
        current = await liveconfig.read(js)  # after `mailbus up`'s migrate made the bucket
        text = await asyncio.to_thread(Path(path).read_text, encoding="utf-8")
        if action == "start" and current is not None and current[1].text == text:
            print(f"mailbus | configuration: revision {current[0]} is {path} already", flush=True)
            return current[0]
        number = await publish_file(js, path, action)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"mailbus | {line}", flush=True)
        print(f"mailbus | {path} not applied: the running revision stays", flush=True)
        return None
    except OSError as exc:
        print(f"mailbus | {path} not applied: {exc}", flush=True)
        return None
    finally:
        await nc.close()
    sys.stdout.flush()
    return number
