"""What the operator's commands (`mailbus queue`, `mailbus blocks`) share: where NATS is,
a connection that gives up quickly, one request/reply with a time-out, and the error
lines and exit codes (1: the service refused, 2: no answer at all).
"""

from __future__ import annotations

import argparse
import getpass
import json
import ssl
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from libs.common.contract.errors import MailbusError
from ops import datadir

if TYPE_CHECKING:
    from nats.aio.client import Client as NATS


class CtlError(MailbusError):
    """A command's failure: the line for stderr and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def connection_options(waits_for: str) -> argparse.ArgumentParser:
    """The options every subcommand takes, as a parent parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--nats-url", action="append", default=None, help="repeatable")
    common.add_argument("--config", default=None, help="take nats.url and credentials from FILE")
    common.add_argument(
        "--data-dir",
        default=None,
        help="`mailbus up`'s data dir (default $MAILBUS_DATA_DIR, then ./var): its NATS",
    )
    common.add_argument(
        "--timeout", type=float, default=15.0, help=f"seconds to wait for {waits_for}"
    )
    return common


def servers(args: argparse.Namespace) -> tuple[list[str], str | None]:
    """NATS URLs and credentials file: --nats-url; else --data-dir; else --config's
    nats.url; else the `mailbus up` running on $MAILBUS_DATA_DIR or ./var.

    Raises CtlError (2) when no instance runs where it looked.
    """
    if args.nats_url:
        return list(args.nats_url), None
    if args.config and not args.data_dir:
        from libs.common.config import load_config

        config = load_config(args.config)
        if config.nats.url:
            return list(config.nats.url), config.nats.credentials_file
    try:
        # `mailbus up` writes the operator's URL (with its password) there, owner-only.
        return [datadir.admin_url(datadir.data_dir(args.data_dir))], None
    except datadir.NoInstance as exc:
        raise CtlError(str(exc), 2) from exc


def _tls_of(args: argparse.Namespace) -> ssl.SSLContext | None:
    """--config's nats.tls_*: e.g. a Kubernetes Job reaching the TLS cluster with the
    config's CA, as the admin user of its --nats-url."""
    if not args.config:
        return None
    from libs.common.config import load_config
    from libs.common.runtime import nats_tls

    return nats_tls.client_context(load_config(args.config).nats)


@asynccontextmanager
async def connection(args: argparse.Namespace, name: str) -> AsyncIterator[NATS]:
    """Raises CtlError (2) when NATS cannot be reached. With --config, its nats.tls_*
    make the connection TLS (verified), as the services' own, for every command."""
    import nats

    from libs.common.contract import subjects
    from libs.common.runtime import bus

    urls, credentials = servers(args)
    plain, user, password = bus.split_credentials(urls)
    options: dict[str, Any] = {"user_credentials": credentials} if credentials else {}
    if user is not None:
        options["user"], options["password"] = user, password
    tls = _tls_of(args)
    if tls is not None:
        options["tls"] = tls

    async def quiet(exc: Exception) -> None:
        pass  # the failure is reported once, by the caller, not per reconnect attempt

    try:
        # A command, not a service: give up quickly instead of reconnecting forever.
        nc = await nats.connect(
            servers=plain,
            name=name,
            inbox_prefix=subjects.inbox_prefix(name),
            connect_timeout=min(args.timeout, 5.0),
            allow_reconnect=False,
            max_reconnect_attempts=1,  # per server; 0 would mean "forever" here
            error_cb=quiet,
            **options,
        )
    except Exception as exc:
        raise CtlError(f"cannot reach NATS: {exc!r}", 2) from exc
    try:
        yield nc
    finally:
        await nc.close()


async def request(
    nc: NATS, subject: str, body: dict[str, Any], wait_s: float, service: str
) -> dict[str, Any]:
    """The service's answer; CtlError 2 when it does not answer, 1 when it refuses."""
    try:
        msg = await nc.request(subject, json.dumps(body).encode(), timeout=wait_s)
    except Exception as exc:  # no responders, time-out
        raise CtlError(f"{service} does not answer: {exc!r}", 2) from exc
    reply: dict[str, Any] = json.loads(msg.data)
    if "error" in reply:
        raise CtlError(str(reply["error"]), 1)
    return reply


def report(command: str, error: CtlError) -> int:
    print(f"{command}: {error}", file=sys.stderr)
    return error.code


def operator() -> str:
    """Who runs the command, recorded in the events it causes."""
    try:
        return getpass.getuser()
    except Exception:
        return ""


def time_text(value: str | None) -> str:
    """An ISO time as `YYYY-MM-DD HH:MM:SS`, or `-`."""
    return value.replace("T", " ")[:19] if value else "-"
