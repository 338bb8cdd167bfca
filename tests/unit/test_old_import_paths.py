"""The two old import paths the shared benchmark harness (perf-compare's mb_up.py) uses."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

from libs.common.runtime import embedded_nats as runtime_embedded_nats


def test_old_embedded_nats_path_is_the_runtime_module_itself() -> None:
    # The harness patches free_port on it: a copy of the names would take the patch
    # where EmbeddedNats.start() never looks.
    old = importlib.import_module("libs.common.embedded_nats")
    assert old is runtime_embedded_nats
    from libs.common import embedded_nats

    assert embedded_nats is runtime_embedded_nats


def test_old_cli_path_runs_the_mailbus_command(capsys: pytest.CaptureFixture[str]) -> None:
    from libs.common.cli import main

    demo = Path(__file__).parents[2] / "config" / "demo.yaml"
    assert main(["config", "check", str(demo)]) == 0
    assert "listeners:" in capsys.readouterr().out
