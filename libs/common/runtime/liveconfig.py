"""Configuration revisions on the bus, and one service process following them live.

`mailbus config apply` writes a `Revision` under the key `active` (or `shadow`)
of the configuration bucket; every replica of every service watches the bucket
and applies each new value whole: each part of the service prepares its new
state from the new configuration first (anything may fail there), and only when
all are prepared are the references swapped, with no await in between, so a
query sees the old state or the new one, never a mix. A revision that fails to
load or to prepare leaves the old one running; the replica says so in its log,
in `mailbus_config_failed_revision` and in its status answer.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue
from prometheus_client import Gauge
from pydantic import ValidationError

from libs.common.config import Config, ConfigError
from libs.common.config.revisions import Revision
from libs.common.contract import subjects

log = logging.getLogger(__name__)

CONFIG_REVISION = Gauge(
    "mailbus_config_revision",
    "Configuration revision this process runs (0: the file it was started with)",
    ["service"],
)
CONFIG_FAILED_REVISION = Gauge(
    "mailbus_config_failed_revision",
    "Latest configuration revision this process could not apply (0: none)",
    ["service"],
)
SHADOW_REVISION = Gauge(
    "mailbus_config_shadow_revision",
    "Shadow configuration revision policy evaluates beside the active one (0: none)",
    ["service"],
)

# How often a follower checks that its watch still brings every revision.
RESYNC_S = 2.0

Commit = Callable[[], None]
# Builds a part's new state from a configuration; raises if it cannot. The commit it
# returns only swaps references and must not fail.
Prepare = Callable[[Config, int], Commit]
ShadowHook = Callable[[Config | None, int], None]


@dataclass
class LiveConfig:
    """The configuration a service runs, with the revision it came from."""

    service: str
    instance: str
    config: Config
    revision: int = 0
    failed: int = 0
    error: str = ""
    shadow_revision: int = 0
    _prepares: list[Prepare] = field(default_factory=list)
    _shadow_hooks: list[ShadowHook] = field(default_factory=list)

    def __post_init__(self) -> None:
        CONFIG_REVISION.labels(self.service).set(self.revision)
        CONFIG_FAILED_REVISION.labels(self.service).set(0)

    def started_at(self, revision: int) -> None:
        self.revision = revision
        CONFIG_REVISION.labels(self.service).set(revision)

    def on_change(self, prepare: Prepare) -> None:
        self._prepares.append(prepare)

    def on_shadow(self, hook: ShadowHook) -> None:
        self._shadow_hooks.append(hook)

    def apply(self, revision: int, config: Config) -> bool:
        """All parts take the new configuration, or none does."""
        try:
            commits = [prepare(config, revision) for prepare in self._prepares]
        except Exception as exc:
            self._refuse(revision, f"{type(exc).__name__}: {exc}")
            return False
        for commit in commits:
            commit()
        self.config, self.revision, self.error = config, revision, ""
        CONFIG_REVISION.labels(self.service).set(revision)
        log.info("%s: configuration revision %d applied", self.service, revision)
        return True

    @property
    def evaluates_shadow(self) -> bool:
        return bool(self._shadow_hooks)

    def set_shadow(self, revision: int, config: Config | None) -> None:
        for hook in self._shadow_hooks:
            hook(config, revision)
        self.shadow_revision = revision if config is not None else 0
        SHADOW_REVISION.labels(self.service).set(self.shadow_revision)

    def _refuse(self, revision: int, error: str) -> None:
        self.failed, self.error = revision, error
        CONFIG_FAILED_REVISION.labels(self.service).set(revision)
        log.error(
            "%s: configuration revision %d not applied, still running %d: %s",
            self.service,
            revision,
            self.revision,
            error,
        )

    def status(self) -> dict[str, object]:
        return {
            "service": self.service,
            "instance": self.instance,
            "revision": self.revision,
            "failed": self.failed,
            "error": self.error,
            "shadow": self.shadow_revision,
        }


def decode(entry: KeyValue.Entry) -> Revision | None:
    """The revision in a bucket entry; None for a delete or purge marker."""
    if entry.value is None or entry.operation in ("DEL", "PURGE"):
        return None
    return Revision.model_validate_json(entry.value)


class ConfigFollower:
    """Watches the bucket for one process; `start` returns once the current value is applied.

    A watch is an ephemeral consumer, which a nats-server restart loses without a
    word; so every RESYNC_S the follower also reads both keys (two direct gets)
    and, finding a revision the watch did not bring, takes it and watches anew.
    """

    def __init__(
        self, js: JetStreamContext, nc: NATS, live: LiveConfig, resync_s: float = RESYNC_S
    ) -> None:
        self._js = js
        self._nc = nc
        self.live = live
        self._resync_s = resync_s
        self._tasks: list[asyncio.Task[None]] = []
        self._status: Subscription | None = None
        self._watcher: KeyValue.KeyWatcher | None = None
        # The last entry taken per key (value or marker), so nothing is taken twice;
        # the revision the process started with counts as taken.
        self._seen: dict[str, int] = {subjects.CONFIG_ACTIVE_KEY: live.revision}

    async def start(self) -> None:
        kv = await self._js.key_value(subjects.CONFIG_BUCKET)
        # Current values first, then a None marker, then every later write.
        self._watcher = await kv.watchall()
        async for entry in self._watcher:
            if entry is None:
                break
            self._take(entry)
        self._tasks = [
            asyncio.create_task(self._follow(self._watcher), name="config-follow"),
            asyncio.create_task(self._resync_loop(kv), name="config-resync"),
        ]
        self._status = await self._nc.subscribe(subjects.CONFIG_STATUS_SUBJECT, cb=self._answer)

    async def stop(self) -> None:
        if self._status is not None:
            await self._status.unsubscribe()
        for task in self._tasks:
            task.cancel()
        await self._stop_watch()

    async def _stop_watch(self) -> None:
        if self._watcher is not None:
            try:
                await self._watcher.stop()  # type: ignore[no-untyped-call]
            except Exception:  # the connection may already be going away
                pass

    async def _follow(self, watcher: KeyValue.KeyWatcher) -> None:
        async for entry in watcher:
            if entry is not None:
                self._take(entry)

    async def _resync_loop(self, kv: KeyValue) -> None:
        while True:
            await asyncio.sleep(self._resync_s)
            try:
                missed = await self._resync(kv)
                if missed:
                    log.warning("%s: configuration watch lost; watching again", self.live.service)
                    await self._stop_watch()
                    self._watcher = await kv.watchall()
                    self._tasks.append(asyncio.create_task(self._follow(self._watcher)))
            except Exception as exc:  # NATS away: the next round tries again
                log.debug("configuration resync: %s: %s", type(exc).__name__, exc)

    async def _resync(self, kv: KeyValue) -> bool:
        missed = False
        for key in (subjects.CONFIG_ACTIVE_KEY, subjects.CONFIG_SHADOW_KEY):
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:  # also a deleted key
                if key == subjects.CONFIG_SHADOW_KEY and self.live.shadow_revision:
                    self.live.set_shadow(0, None)
                    missed = True
                continue
            if int(entry.revision or 0) > self._seen.get(key, 0):
                self._take(entry)
                missed = True
        return missed

    def _take(self, entry: KeyValue.Entry) -> None:
        revision = int(entry.revision or 0)
        if revision <= self._seen.get(entry.key, 0):
            return
        self._seen[entry.key] = revision
        try:
            record = decode(entry)
        except ValidationError as exc:
            self.live._refuse(
                revision, f"not a configuration revision: {exc.error_count()} error(s)"
            )
            return
        if entry.key == subjects.CONFIG_SHADOW_KEY:
            self._take_shadow(revision, record)
            return
        if entry.key != subjects.CONFIG_ACTIVE_KEY or record is None:
            return
        try:
            config = record.load()
        except ConfigError as exc:
            self.live._refuse(revision, "; ".join(exc.errors))
            return
        self.live.apply(revision, config)

    def _take_shadow(self, revision: int, record: Revision | None) -> None:
        if not self.live.evaluates_shadow:
            return  # only policy decides anything under a shadow revision
        if record is None:
            self.live.set_shadow(0, None)
            return
        try:
            config = record.load()
        except ConfigError as exc:
            self.live._refuse(revision, "shadow: " + "; ".join(exc.errors))
            return
        try:
            self.live.set_shadow(revision, config)
        except Exception as exc:
            self.live._refuse(revision, f"shadow: {type(exc).__name__}: {exc}")

    async def _answer(self, msg: Msg) -> None:
        if msg.reply:
            await msg.respond(json.dumps(self.live.status()).encode())


async def starting_config(js: JetStreamContext, service: str, file: Config) -> tuple[Config, int]:
    """What a process starts with: the active revision if there is one (so a restart
    applies what waited for it, listeners included), else the file it was given."""
    try:
        current = await read(js)
    except Exception as exc:  # an older server, or no permission: run the file
        log.warning("%s: configuration revisions unreadable (%s); running the file", service, exc)
        return file, 0
    if current is None:
        return file, 0
    number, record = current
    try:
        return record.load(), number
    except ConfigError as exc:
        log.error(
            "%s: active configuration revision %d does not load here, running the file: %s",
            service,
            number,
            "; ".join(exc.errors),
        )
        return file, 0


async def read(
    js: JetStreamContext, key: str = subjects.CONFIG_ACTIVE_KEY
) -> tuple[int, Revision] | None:
    """The key's current revision number and value, or None when it has none."""
    kv = await js.key_value(subjects.CONFIG_BUCKET)
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    record = decode(entry)
    return (int(entry.revision or 0), record) if record is not None else None


async def publish(
    js: JetStreamContext, record: Revision, key: str = subjects.CONFIG_ACTIVE_KEY
) -> int:
    """Writes the revision; its number (the bucket's sequence)."""
    kv = await js.key_value(subjects.CONFIG_BUCKET)
    return int(await kv.put(key, record.model_dump_json().encode()))


async def clear_shadow(js: JetStreamContext) -> None:
    kv = await js.key_value(subjects.CONFIG_BUCKET)
    await kv.delete(subjects.CONFIG_SHADOW_KEY)


async def history(js: JetStreamContext) -> list[tuple[int, str, Revision]]:
    """Every revision the bucket still holds, of both keys, oldest first."""
    kv = await js.key_value(subjects.CONFIG_BUCKET)
    out: list[tuple[int, str, Revision]] = []
    for key in (subjects.CONFIG_ACTIVE_KEY, subjects.CONFIG_SHADOW_KEY):
        try:
            entries = await kv.history(key)
        except (KeyNotFoundError, NoKeysError):
            continue
        for entry in entries:
            record = decode(entry)
            if record is not None:
                out.append((int(entry.revision or 0), key, record))
    return sorted(out, key=lambda item: item[0])


async def revision(js: JetStreamContext, number: int) -> tuple[str, Revision] | None:
    """The key and value of revision `number`, while the bucket still holds it."""
    for found, key, record in await history(js):
        if found == number:
            return key, record
    return None


async def replicas(nc: NATS, wait_s: float = 0.5) -> list[dict[str, object]]:
    """Every running replica's status: all answers that arrive within wait_s."""
    inbox = nc.new_inbox()
    answers: list[dict[str, object]] = []

    async def collect(msg: Msg) -> None:
        try:
            answers.append(json.loads(msg.data))
        except ValueError:
            pass

    sub = await nc.subscribe(inbox, cb=collect)
    try:
        await nc.publish(subjects.CONFIG_STATUS_SUBJECT, b"", reply=inbox)
        await nc.flush()
        await asyncio.sleep(wait_s)
    finally:
        await sub.unsubscribe()
    return sorted(answers, key=lambda a: (str(a.get("service")), str(a.get("instance"))))
