"""The demo as the README tells it: its ports, its accounts and their passwords,
the postmaster's mailbox; and a package whose metadata builds without warnings."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from libs.common.config import load_config
from libs.common.mail.userhash import verify_password

ROOT = Path(__file__).resolve().parents[2]


def test_the_readme_lists_the_demo_ports_and_working_credentials() -> None:
    config = load_config(ROOT / "config" / "demo.yaml")
    readme = (ROOT / "README.md").read_text()
    for listener in config.listeners:
        assert re.search(rf"\| {listener.port} \| {listener.name} \|", readme), listener.name
    credentials = dict(re.findall(r"`([a-z]+@example\.test)` / `([^`]+)`", readme))
    accounts = {user.address: user.password_hash for user in config.users}
    assert set(credentials) == set(accounts), credentials
    for address, password in credentials.items():
        assert verify_password(accounts[address], password), address
    # Double bounces and reports to the postmaster reach a mailbox someone can read.
    assert config.server.postmaster in accounts


def test_the_license_is_an_spdx_string() -> None:
    # A TOML table here makes setuptools print a deprecation warning at every install.
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "Apache-2.0"
    assert any(r.startswith("setuptools>=77") for r in project["build-system"]["requires"])
