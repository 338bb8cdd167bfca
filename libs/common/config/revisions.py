"""A configuration revision as it is stored on the bus, and what one changes against another.

A revision keeps the YAML text as applied (not the parsed model), so every
replica validates it with the same loader as `mailbus config check`, and the
directory its relative paths were written against (certificates, users_file),
which every host must have at that path. Differences are by dotted key over the
effective configuration (defaults filled in, secrets masked), so a diff or a
history line never shows a password.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict

from .dump import effective_data
from .loader import load_config_text
from .model import Config

Action = Literal["start", "apply", "reload", "rollback", "promote", "shadow"]

SUMMARY_KEYS = 3


class Revision(BaseModel):
    """One value of the configuration bucket; its revision number is the bucket's sequence."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    text: str
    source: str
    base_dir: str
    applied_at: datetime
    applied_by: str
    action: Action
    # rollback: the revision restored; promote: the shadow revision made active.
    of: int | None = None
    summary: str = ""

    def load(self) -> Config:
        """The configuration; ConfigError with `config check`'s lines, named after the file."""
        return load_config_text(self.text, source=self.source, base_dir=self.base_dir)


@dataclass(frozen=True)
class Change:
    key: str
    old: object
    new: object


_ABSENT = "(none)"


def flatten(data: object, prefix: str = "") -> Iterator[tuple[str, object]]:
    """Leaves of the effective data as (dotted key, value); list items by index, but
    a list of named entries (listeners, users) by name, so a reordering is no change."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from flatten(value, f"{prefix}.{key}" if prefix else str(key))
        if not data and prefix:
            yield prefix, {}
    elif isinstance(data, list) and data and all(_named(item) for item in data):
        for item in data:
            assert isinstance(item, dict)
            by = "name" if isinstance(item.get("name"), str) else "address"
            rest = {k: v for k, v in item.items() if k != by}
            yield from flatten(rest or {"": True}, f"{prefix}[{item[by]}]")
    else:
        yield prefix, data


def _named(item: object) -> bool:
    return isinstance(item, dict) and (
        isinstance(item.get("name"), str) or isinstance(item.get("address"), str)
    )


def diff(old: Config | None, new: Config) -> list[Change]:
    """Every key whose effective value differs; a key only one side has shows `(none)`."""
    before = dict(flatten(effective_data(old))) if old is not None else {}
    after = dict(flatten(effective_data(new)))
    keys = list(dict.fromkeys([*before, *after]))
    return [
        Change(key.removesuffix("."), before.get(key, _ABSENT), after.get(key, _ABSENT))
        for key in keys
        if before.get(key, _ABSENT) != after.get(key, _ABSENT)
    ]


def summary(changes: list[Change]) -> str:
    """One line for `config history`: the first few keys changed."""
    if not changes:
        return "no key changed (files it names are read again)"
    keys = [change.key for change in changes]
    shown = ", ".join(keys[:SUMMARY_KEYS])
    more = len(keys) - SUMMARY_KEYS
    return f"{shown} (+{more} more)" if more > 0 else shown


# What waits for a restart, by key prefix (`[]` standing for any entry of a list):
# everything else is applied live by every replica (see LIVE_EFFECTS, rendered into
# docs/configuration.md).
RESTART_ONLY: dict[str, str] = {
    "listeners[]": "a listener added or removed is bound or closed at start",
    "listeners[].address": "listener addresses are bound at start",
    "listeners[].protocol": "listener addresses are bound at start",
    "listeners[].tls": "a listener's TLS mode is set when it is bound",
    "nats": "the bus connection is made at start",
    "telemetry": "tracing and the metrics listener are set up at start",
    "logging.format": "the log handler is set up at start",
    "mailboxes": "the mailbox store is opened at start",
    "policy.timeout": "ingress's policy client is made at start",
    "relay.pop3_before_smtp": "whether POP3 logins become grants (and for how long) is set "
    "at start",
    "delivery.max_delivery_threads": "the shared consumer's ack limit is set at start",
}

_ENTRY = re.compile(r"\[[^\]]*\]")


def restart_only(changes: list[Change]) -> list[tuple[str, str]]:
    """(key, why) for each changed key that waits for the next restart."""
    out: list[tuple[str, str]] = []
    for change in changes:
        general = _ENTRY.sub("[]", change.key)
        if general.startswith("listeners[]") and _ABSENT in (change.old, change.new):
            out.append((change.key, RESTART_ONLY["listeners[]"]))
            continue
        for prefix, why in RESTART_ONLY.items():
            if general == prefix or (general.startswith(f"{prefix}.") and prefix[-1] != "]"):
                out.append((change.key, why))
                break
    return out


# Each top-level section and what a new revision does to it while running.
LIVE_EFFECTS: dict[str, str] = {
    "server": "hostname, postmaster and local_domains: new sessions, decisions, routing "
    "and reports use them (a POP3 listener greets with the start hostname until a restart)",
    "nats": "restart only: the connection is made at start",
    "dns": "policy's sender-domain resolver and delivery's MX resolver are made anew",
    "listeners": "require_auth, proxy_protocol and pregreet_wait of an SMTP listener apply "
    "to its new sessions; addresses, protocols, TLS modes and listeners added or removed "
    "wait for a restart",
    "tls": "new sessions and new STARTTLS present the new certificate (the files are read "
    "again on every revision, even when no key changed); open sessions keep theirs",
    "ip_groups": "the next policy query uses the new groups",
    "users": "the next login and recipient check use the new accounts and aliases",
    "users_file": "read again on every revision",
    "mailboxes": "restart only",
    "relay": "the next policy query uses the new relay rules; hide_local_ip_group applies "
    "to new sessions; turning pop3_before_smtp on or off waits for a restart",
    "security": "the next policy query uses the new limits; ingress's per-session limits "
    "and time-outs apply from the next connection; counters already kept stay",
    "antispam": "the next policy query uses the new settings",
    "delivery": "mode routes the next decision of the queue; relay host, TLS, timeouts and "
    "ports serve the next delivery attempt; max_delivery_threads waits for a restart",
    "queue": "retry, warning and bounce times for the next decision; report_language for "
    "the next report",
    "logging": "level at once in every process (unless --log-level or MAILBUS_LOG_LEVEL "
    "set it); format at the next restart",
    "telemetry": "restart only",
    "policy": "restart only",
}
