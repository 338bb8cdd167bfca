"""A short run of bench/fuzz.py: mutated SMTP and POP3 sessions find no internal error."""

from __future__ import annotations

import logging

import pytest
from nats.js import JetStreamContext

from bench.fuzz import CONFIG, fuzz
from libs.common.config import load_config_text
from libs.common.runtime.embedded_nats import EmbeddedNats
from libs.common.runtime.service import start_service
from services.ingress.service import IngressService
from services.policy.service import PolicyService


async def test_mutated_sessions_cause_no_internal_error(
    nats_server: EmbeddedNats, js: JetStreamContext, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    config = load_config_text(CONFIG)
    policy = await start_service("policy", PolicyService, config, [nats_server.url])
    ingress = await start_service("ingress", IngressService, config, [nats_server.url])
    try:
        service = ingress.service
        assert isinstance(service, IngressService)
        report = await fuzz(
            service.addresses["smtp"], service.addresses["pop3"], 64, seed=14, within_s=60
        )
    finally:
        await ingress.close()
        await policy.close()
    assert report.sessions == 64 and report.replies > report.sessions
    assert report.findings == []
    bad = [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    assert bad == []
