"""`mailbus check --client IP [--helo H] [--auth USER] --from S --to R`: a policy dry run.

What policy would answer a client at each stage of one SMTP transaction, and
which rule decided, like `postmap -q` or `sendmail -bv`. It asks the running
policy service on `subjects.POLICY_DRYRUN_SUBJECT`, which decides with the same
rules and the same limits' state but counts nothing and blocks no one, so asking
does not bring a client nearer a limit. Exit code 0: every stage accepted; 1:
one refused; 2: no answer.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
from typing import TYPE_CHECKING, Any

from libs.common.contract import subjects
from libs.common.contract.policy import PolicyDecision, PolicyQuery, Session
from ops import ctl

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        parents=[ctl.connection_options("policy")],
        help="what policy would answer a client, stage by stage (nothing is counted)",
    )
    p.add_argument("--client", required=True, metavar="IP", help="the client's address")
    p.add_argument("--helo", default="", help="the name it gives in HELO/EHLO")
    p.add_argument("--auth", default=None, metavar="USER", help="as if logged in as USER")
    p.add_argument("--tls", action="store_true", help="as if after STARTTLS")
    p.add_argument("--listener", default="smtp", help="the listener it talks to (smtp)")
    p.add_argument("--from", dest="mail_from", default="", metavar="SENDER", help="MAIL FROM")
    p.add_argument("--to", action="append", default=[], metavar="RCPT", help="repeatable")
    p.add_argument("--size", type=int, default=0, help="message size for the DATA stage")
    p.add_argument("--json", action="store_true", help="one JSON object per stage and line")
    p.set_defaults(func=check_command)


def queries(args: argparse.Namespace) -> list[PolicyQuery]:
    """The queries ingress would send for this transaction, in its order."""
    session = Session(
        session_id=f"dryrun-{secrets.token_hex(6)}",
        client_ip=args.client,
        listener=args.listener,
        helo=args.helo,
        tls=args.tls,
        auth_user=args.auth,
    )
    found = [PolicyQuery(stage="connect", session=session)]
    if args.helo:
        found.append(PolicyQuery(stage="helo", session=session))
    found.append(PolicyQuery(stage="mail", session=session, mail_from=args.mail_from))
    for count, rcpt in enumerate(args.to):
        found.append(
            PolicyQuery(
                stage="rcpt",
                session=session,
                mail_from=args.mail_from,
                rcpt=rcpt,
                rcpt_count=count,
            )
        )
    if args.to:
        found.append(
            PolicyQuery(
                stage="data",
                session=session,
                mail_from=args.mail_from,
                rcpt_count=len(args.to),
                size=args.size,
            )
        )
    return found


async def ask(nc: NATS, query: PolicyQuery, wait_s: float) -> PolicyDecision:
    try:
        msg = await nc.request(
            subjects.POLICY_DRYRUN_SUBJECT, query.model_dump_json().encode(), timeout=wait_s
        )
    except Exception as exc:
        raise ctl.CtlError(f"policy does not answer: {exc!r}", 2) from exc
    error = (msg.headers or {}).get("Nats-Service-Error")
    if error:
        raise ctl.CtlError(f"policy refused the question: {error}", 2)
    return PolicyDecision.model_validate_json(msg.data)


def format_line(query: PolicyQuery, decision: PolicyDecision) -> str:
    what = query.rcpt if query.stage == "rcpt" else ""
    stage = f"{query.stage} {what}".strip()
    return f"{stage:<28} {decision.action:<8} {decision.smtp_reply}  (rule {decision.rule})"


def check_command(args: argparse.Namespace) -> int:
    return asyncio.run(_run(args))


async def _run(args: argparse.Namespace) -> int:
    refused = False
    try:
        asked = queries(args)
        async with ctl.connection(args, "mailbus-check") as nc:
            accepted_rcpts = 0
            for query in asked:
                if query.stage == "data" and not accepted_rcpts:
                    break  # as in SMTP: no recipient, no DATA
                decision = await ask(nc, query, args.timeout)
                refused = refused or not decision.accepted
                accepted_rcpts += query.stage == "rcpt" and decision.accepted
                if args.json:
                    line = {"stage": query.stage, "rcpt": query.rcpt, **decision.model_dump()}
                    print(json.dumps(line, sort_keys=True))
                else:
                    print(format_line(query, decision))
                if not decision.accepted and query.stage in ("connect", "helo", "mail"):
                    break  # the client gets no further in this transaction
    except ctl.CtlError as exc:
        return ctl.report("mailbus check", exc)
    except ValueError as exc:  # a malformed --client and the like
        return ctl.report("mailbus check", ctl.CtlError(str(exc), 2))
    return 1 if refused else 0
