"""Live configuration benchmark: how long a revision takes to reach every replica, and
what evaluating a shadow revision costs policy.

    python bench/liveconfig.py [--replicas 2] [--applies 20] [--queries 2000]

Runs a nats-server and N policy plus N ingress replicas in this process. Prints,
for --applies revisions written to the bucket one after another, the time from
the write to every replica running it (p50, max); then policy's answer rate
for --queries RCPT queries (one at a time) without a shadow revision and with
one that differs on every query, and how many differences were recorded.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libs.common.config import load_config_text  # noqa: E402
from libs.common.config.revisions import Revision  # noqa: E402
from libs.common.contract import subjects  # noqa: E402
from libs.common.contract.policy import PolicyQuery, Session  # noqa: E402
from libs.common.runtime import bus, liveconfig  # noqa: E402
from libs.common.runtime.embedded_nats import EmbeddedNats  # noqa: E402
from libs.common.runtime.policy_client import PolicyClient  # noqa: E402
from libs.common.runtime.service import Running, start_service  # noqa: E402
from services.ingress.service import IngressService  # noqa: E402
from services.policy.service import PolicyService  # noqa: E402

CONFIG = """\
server: {{hostname: mx.bench.test, local_domains: [bench.test]}}
listeners:
  - {{name: smtp, protocol: smtp, address: '127.0.0.1:0', tls: none}}
ip_groups: {{office: [{office}]}}
relay: {{allowed_ip_group: office}}
security: {{require_sender_domain_dns: false}}
"""
WAIT_S = 10.0


def record(text: str, base: Path) -> Revision:
    return Revision(
        text=text,
        source=str(base / "mailbus.yaml"),
        base_dir=str(base),
        applied_at=datetime.now(UTC),
        applied_by="bench",
        action="apply",
    )


async def until(done: Callable[[], bool]) -> float:
    """Seconds until `done()` (read in-process: no polling over NATS); WAIT_S at most."""
    started = time.perf_counter()
    deadline = started + WAIT_S
    while not done():
        if time.perf_counter() > deadline:
            raise TimeoutError(f"not reached after {WAIT_S}s")
        await asyncio.sleep(0.0005)
    return time.perf_counter() - started


async def reach_all(running: list[Running], number: int) -> float:
    return await until(lambda: all(r.ctx.live.revision >= number for r in running))


async def rate(client: PolicyClient, queries: int) -> float:
    query = PolicyQuery(
        stage="rcpt",
        session=Session(session_id="b1", client_ip="192.0.2.1"),
        mail_from="a@remote.test",
        rcpt="b@remote.test",
    )
    started = time.perf_counter()
    for _ in range(queries):
        await client.ask(query)
    return queries / (time.perf_counter() - started)


async def main(args: argparse.Namespace) -> None:
    base = Path(tempfile.mkdtemp(prefix="mailbus-bench-live-"))
    server = EmbeddedNats(data_dir=base / "nats", log_file=base / "nats.log")
    await server.astart()
    nc = await bus.connect([server.url], name="bench")
    js = await bus.wait_for_jetstream(nc)
    await bus.ensure_topology(js)
    config = load_config_text(CONFIG.format(office="192.0.2.1"))
    running: list[Running] = []
    try:
        for _ in range(args.replicas):
            running.append(await start_service("policy", PolicyService, config, [server.url]))
            running.append(await start_service("ingress", IngressService, config, [server.url]))
        times = []
        for n in range(args.applies):
            text = CONFIG.format(office=f"192.0.2.{1 + n % 2}")
            started = time.perf_counter()  # from the write itself, its ack included
            number = await liveconfig.publish(js, record(text, base))
            await reach_all(running, number)
            times.append(time.perf_counter() - started)
        ms = sorted(t * 1000 for t in times)
        print(
            f"revision to all {len(running)} replicas: p50 {statistics.median(ms):.1f} ms, "
            f"max {ms[-1]:.1f} ms over {len(ms)} applies"
        )
        # Active: 192.0.2.1 may relay; the shadow refuses it, so every query differs.
        number = await liveconfig.publish(js, record(CONFIG.format(office="192.0.2.1"), base))
        await reach_all(running, number)
        client = PolicyClient(nc)
        plain = await rate(client, args.queries)
        shadow = record(CONFIG.format(office="192.0.2.9"), base).model_copy(
            update={"action": "shadow"}
        )
        shadow_number = await liveconfig.publish(js, shadow, subjects.CONFIG_SHADOW_KEY)
        policies = [r for r in running if r.ctx.service == "policy"]
        await until(lambda: all(r.ctx.live.shadow_revision == shadow_number for r in policies))
        with_shadow = await rate(client, args.queries)
        await asyncio.sleep(0.5)
        info = await js.stream_info(subjects.SHADOW_STREAM)
        print(
            f"policy rcpt answers/s, one at a time: {plain:.0f} without a shadow, "
            f"{with_shadow:.0f} with one differing on every query "
            f"({info.state.messages} differences recorded)"
        )
    finally:
        for r in reversed(running):
            await r.close()
        await nc.close()
        await server.astop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--applies", type=int, default=20)
    parser.add_argument("--queries", type=int, default=2000)
    asyncio.run(main(parser.parse_args()))
