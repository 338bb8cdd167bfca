"""The short chaos run (bench/chaos.py): every kind of process SIGKILLed once under load.

A 3-node JetStream cluster with R3 streams, two processes of each service, a few
hundred messages; one ingress, policy, queue, delivery and notifier process and
one NATS node are killed in turn and started again. Nothing accepted may be lost,
and the queue must drain. The long run's figures are in docs/reliability.md.
"""

from __future__ import annotations

from pathlib import Path

from bench.chaos import KINDS, run


async def test_every_kind_killed_once_loses_nothing(tmp_path: Path) -> None:
    report = await run(
        tmp_path, n=300, replicas=2, kinds=KINDS, kill_every_s=3.5, drain_s=60.0, threads=8
    )
    print("\n".join(report.lines()))
    assert [k.kind for k in report.kills] == list(KINDS)
    assert report.accepted == report.sent  # clients retry: every message gets its "250"
    assert report.lost == 0
    assert report.stuck == 0
    assert report.delivered == report.accepted
    # Only the SMTP minimum and the crash window remain: well under 1 % here.
    assert report.duplicated <= max(1, report.accepted // 100)
