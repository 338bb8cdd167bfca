"""AUTH flood benchmark: one policy process under wrong passwords from many addresses.

    python bench/auth_flood.py [--addresses 15] [--connections 6] [--seconds 20]
                               [--root DIR]

Asks policy over NATS exactly as ingress does (request/reply on the auth and
mail stages, an answer awaited for `policy.timeout`, 5 s). During the flood,
one legitimate login from another address each second and five MAIL
decisions a second are timed. Prints what policy spent (password checks that
failed, CPU seconds, peak RSS), how the legitimate logins and MAIL decisions
fared, and how long policy stayed busy after the flood ended.

`--root` runs the policy code of another checkout (e.g. an export of main, for
the "before" column); the flood itself is the same. Bounded: the flood stops
after `--seconds`, the wait for policy to go idle after 180 s.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

from argon2 import PasswordHasher, Type
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from libs.common.runtime.embedded_nats import EmbeddedNats, free_port  # noqa: E402

TIMEOUT_S = 5.0
PASSWORD = "the right one"
LEGIT_IP = "203.0.113.5"
IDLE_WAIT_S = 180.0
CLK = os.sysconf("SC_CLK_TCK")

CONFIG = """\
server: {{hostname: mx.bench.test, local_domains: [bench.test]}}
users:
  - {{address: alice@bench.test, password_hash: "{hash}"}}
security:
  max_failed_commands: {limit}
{extra}  require_sender_domain_dns: false
  max_messages_per_hour_per_ip: 0
antispam: {{spf: false}}
policy: {{timeout: {timeout:g}s}}
telemetry: {{metrics_address: null}}
"""

TOPOLOGY = """\
import asyncio, sys
from libs.common.runtime import bus
async def main():
    nc = await bus.connect([sys.argv[1]], name="bench-topology")
    await bus.ensure_topology(await bus.wait_for_jetstream(nc))
    await nc.close()
asyncio.run(main())
"""


def _stat(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (policy's password workers, where there are)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat(int(entry.name))[1]) == pid:
                    found.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue  # gone meanwhile
    return found


def _hwm(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def proc_stat(pid: int) -> tuple[float, int, int]:
    """CPU seconds of a process and its children (live ones, and reaped ones through
    cutime/cstime), its peak RSS and its live children's summed peak RSS (kB)."""
    fields = _stat(pid)
    cpu = sum(int(f) for f in fields[11:15]) / CLK
    children = 0
    for child in _children(pid):
        try:
            cpu += sum(int(f) for f in _stat(child)[11:13]) / CLK
            children += _hwm(child)
        except (OSError, IndexError, ValueError):
            continue
    return cpu, _hwm(pid), children


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def query(stage: str, ip: str, **fields: object) -> bytes:
    # Plain JSON so that the same flood runs against any checkout's PolicyQuery.
    session = {"session_id": uuid.uuid4().hex, "client_ip": ip, "listener": "smtp", "tls": True}
    return json.dumps({"stage": stage, "session": session, **fields}).encode()


async def ask(nc: NATS, stage: str, data: bytes) -> tuple[str, float]:
    """The reply code (or "none" without an answer in time) and the seconds it took."""
    started = time.monotonic()
    try:
        msg = await nc.request(f"mailbus.policy.v1.{stage}", data, timeout=TIMEOUT_S)
    except (NatsTimeout, NoRespondersError, TimeoutError):
        return "none", time.monotonic() - started
    took = time.monotonic() - started
    if msg.headers and msg.headers.get("Nats-Service-Error-Code"):
        return "error", took
    answer = json.loads(msg.data)
    return f"{answer['code']} {answer.get('rule', '')}".strip(), took


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def run(args: argparse.Namespace, root: Path) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="mailbus-authflood-"))
    server = EmbeddedNats(data_dir=tmp / "nats", log_file=tmp / "nats.log")
    server.start()
    policy: asyncio.subprocess.Process | None = None
    try:
        # The key exists only where the flood fix is: elsewhere max_failed_commands is the limit.
        has_key = "max_auth_failures_per_ip" in (root / "libs/common/config/rules.py").read_text()
        extra = f"  max_auth_failures_per_ip: {args.limit}\n" if has_key else ""
        hashed = PasswordHasher(type=Type.ID).hash(PASSWORD)  # argon2-cffi's defaults
        cfg = tmp / "policy.yaml"
        cfg.write_text(CONFIG.format(hash=hashed, limit=args.limit, extra=extra, timeout=TIMEOUT_S))
        env = dict(os.environ, MAILBUS_LOG_LEVEL="ERROR", PYTHONPATH=str(root))
        setup = await asyncio.create_subprocess_exec(
            sys.executable, "-c", TOPOLOGY, server.url, cwd=root, env=env
        )
        await setup.wait()
        policy = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "services.policy",
            "--config",
            str(cfg),
            "--nats-url",
            server.url,
            "--metrics-address",
            f"127.0.0.1:{free_port()}",
            cwd=root,
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=(tmp / "policy.log").open("wb"),
            # Its own session, so its own scheduling group (autogroup): the flood's
            # clients, here on the same machine, then take CPU from their group and
            # not from policy's niced workers (a remote attacker's take none).
            start_new_session=True,
        )
        nc = NATS()
        await nc.connect(server.url, name="bench")
        await wait_for_policy(nc)
        await measure(args, nc, policy.pid)
        await nc.close()
    finally:
        if policy is not None and policy.returncode is None:
            policy.terminate()
            await policy.wait()
        server.stop()


async def wait_for_policy(nc: NATS) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        code, _ = await ask(nc, "mail", query("mail", LEGIT_IP, mail_from="a@bench.test"))
        if code not in ("none", "error"):
            return
        await asyncio.sleep(0.2)
    raise RuntimeError("policy never answered")


async def measure(args: argparse.Namespace, nc: NATS, pid: int) -> None:
    cpu0, _, _ = proc_stat(pid)
    load0 = loadavg()
    baseline: list[float] = []
    for _ in range(20):
        _, took = await ask(nc, "mail", query("mail", LEGIT_IP, mail_from="a@bench.test"))
        baseline.append(took)
    flooding = True
    wrong: dict[str, int] = {}
    flood_codes: dict[str, int] = {}

    async def attacker(ip: str) -> None:
        while flooding:
            data = query(
                "auth", ip, mechanism="PLAIN", username="alice@bench.test", password="wrong"
            )
            code, _ = await ask(nc, "auth", data)
            flood_codes[code] = flood_codes.get(code, 0) + 1
            if code.startswith("535"):
                wrong[ip] = wrong.get(ip, 0) + 1

    legit: list[tuple[str, float]] = []

    async def legitimate() -> None:
        while flooding:
            data = query(
                "auth", LEGIT_IP, mechanism="PLAIN", username="alice@bench.test", password=PASSWORD
            )
            legit.append(await ask(nc, "auth", data))
            await asyncio.sleep(1.0)

    mail: list[tuple[str, float]] = []

    async def mails() -> None:
        while flooding:
            mail.append(await ask(nc, "mail", query("mail", LEGIT_IP, mail_from="a@bench.test")))
            await asyncio.sleep(0.2)

    ips = [f"198.51.100.{n}" for n in range(1, args.addresses + 1)]
    tasks = [asyncio.create_task(attacker(ip)) for ip in ips for _ in range(args.connections)]
    tasks += [asyncio.create_task(legitimate()), asyncio.create_task(mails())]
    await asyncio.sleep(args.seconds)
    flooding = False
    ended = time.monotonic()
    await asyncio.gather(*tasks)
    # After the flood: until policy spends under 5% of a core over a second.
    idle_at = ended
    previous, _, _ = proc_stat(pid)
    load1 = loadavg()
    while time.monotonic() - ended < IDLE_WAIT_S:
        await asyncio.sleep(1.0)
        now_cpu, _, _ = proc_stat(pid)
        if now_cpu - previous < 0.05:
            idle_at = time.monotonic() - 1.0
            break
        previous = now_cpu
    else:
        idle_at = float("inf")
    after_legit: list[tuple[str, float]] = []
    for _ in range(3):
        data = query(
            "auth", LEGIT_IP, mechanism="PLAIN", username="alice@bench.test", password=PASSWORD
        )
        after_legit.append(await ask(nc, "auth", data))
    cpu1, hwm, workers_hwm = proc_stat(pid)
    per_ip = [wrong.get(ip, 0) for ip in ips]
    ok = [t for code, t in legit if code.startswith("235")]
    prompt = [t for t in ok if t <= 1.0]
    mail_times = [t for _, t in mail]
    rows = [
        ("flood", f"{args.addresses} addresses x {args.connections} connections, {args.seconds}s"),
        (
            "wrong-password checks answered 535",
            f"{sum(per_ip)} ({min(per_ip)}-{max(per_ip)} per address, limit {args.limit})",
        ),
        ("flood answers", ", ".join(f"{k}: {v}" for k, v in sorted(flood_codes.items()))),
        ("legit logins ok during flood", f"{len(ok)}/{len(legit)}"),
        ("legit logins ok within 1 s", f"{len(prompt)}/{len(legit)}"),
        (
            "legit logins over 1 s (n-th: s)",
            ", ".join(f"{n}: {t:.2f}" for n, (_, t) in enumerate(legit, 1) if t > 1.0) or "none",
        ),
        (
            "legit login p50 / max (s)",
            f"{pct(ok, 0.5):.3f} / {max(ok) if ok else float('nan'):.3f}",
        ),
        ("legit login answers", ", ".join(sorted({c for c, _ in legit}))),
        ("MAIL decision p95 before flood (ms)", f"{pct(baseline, 0.95) * 1000:.1f}"),
        (
            "MAIL decision p50 / p95 during (ms)",
            f"{pct(mail_times, 0.5) * 1000:.1f} / {pct(mail_times, 0.95) * 1000:.1f}",
        ),
        ("MAIL decision max during (ms)", f"{max(mail_times, default=0.0) * 1000:.1f}"),
        ("policy busy after the flood (s)", f"{idle_at - ended:.1f}"),
        ("legit logins ok after it", f"{sum(c.startswith('235') for c, _ in after_legit)}/3"),
        ("policy CPU (s), workers included", f"{cpu1 - cpu0:.1f}"),
        ("peak RSS (MB): policy / its workers", f"{hwm / 1024:.0f} / {workers_hwm / 1024:.0f}"),
        ("load average: start / flood's end", f"{load0} / {load1}"),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--addresses", type=int, default=15)
    parser.add_argument("--connections", type=int, default=6)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--limit", type=int, default=10)
    parser.add_argument("--root", default=str(ROOT), help="checkout whose policy runs")
    args = parser.parse_args()
    asyncio.run(run(args, Path(args.root).resolve()))


if __name__ == "__main__":
    main()
