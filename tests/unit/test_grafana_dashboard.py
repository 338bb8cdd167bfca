"""deploy/grafana's dashboard, checked offline: valid JSON in Grafana's dashboard
shape, panel ids and positions that do not collide, and queries that name only
metrics mailbus exports (so a renamed metric cannot leave an empty panel)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

from libs.common.runtime import metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "mailbus-dashboard.json"
SUFFIXES = ("_bucket", "_count", "_sum", "_total", "_created")


def _exported() -> set[str]:
    """Family names (counters without `_total`) of every mailbus metric."""
    names = {family.name for family in REGISTRY.collect()}
    # The queue's figures are computed at scrape time by a collector the queue service
    # registers; one made here names them.
    stats = metrics.QueueStatsCollector(lambda: ({}, None), lambda: [])
    names |= {family.name for family in stats.collect()}
    return {n for n in names if n.startswith("mailbus_")}


def _base(name: str) -> str:
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return name


def test_the_dashboard_names_only_exported_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert dashboard["title"] and dashboard["uid"] and isinstance(dashboard["schemaVersion"], int)
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource"]
    exported = {_base(n) for n in _exported()}
    assert "mailbus_qmgr_messages" in exported and "mailbus_smtpd_refusals" in exported
    # postfix_exporter's rejects by code, delivery delay and queue age have counterparts.
    assert {
        "mailbus_smtpd_messages_rejected",
        "mailbus_smtp_delivery_delay_seconds",
        "mailbus_qmgr_message_age_seconds",
    } <= exported
    ids, cells = set(), set()
    for panel in dashboard["panels"]:
        assert panel["id"] not in ids
        ids.add(panel["id"])
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"panel {panel['title']!r} overlaps another"
                cells.add((x, y))
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == "${datasource}"
            used = set(re.findall(r"\bmailbus_[a-z_]+", target["expr"]))
            assert used, target["expr"]
            unknown = {n for n in used if _base(n) not in exported}
            assert not unknown, f"{panel['title']!r} asks for {unknown}"
