"""Wiring of the policy service: the config turned into PolicyRules, the endpoints registered."""

from __future__ import annotations

import logging

from libs.common import subjects
from libs.common.config import Config, ConfigError
from libs.common.runtime import Context
from services.policy.adapters.nats_micro import PolicyEndpoints
from services.policy.core import PolicyRules

log = logging.getLogger(__name__)


def rules_from_config(config: Config) -> PolicyRules:
    group_name = config.relay.allowed_ip_group
    group = None
    if group_name is not None:
        group = config.ip_group(group_name)
        if group is None:
            # The config model should have caught this; never fall back to "no group" silently.
            raise ConfigError([f"relay.allowed_ip_group: no ip_groups entry named {group_name!r}"])
    return PolicyRules.build(
        local_domains=config.server.local_domains,
        relay_mode=config.relay.mode,
        allowed_ip_group=group,
        relay_for_authenticated=config.relay.smtp_auth,
        allowed_ip_group_name=group_name,
    )


class PolicyService:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.rules = rules_from_config(ctx.config)
        self.endpoints = PolicyEndpoints(self.rules)

    async def start(self) -> None:
        if self.rules.relay_mode == "open":
            log.warning("open relay: anyone may send anywhere (relay.mode: open)")
        await self.endpoints.register(self.ctx.micro)
        # "Started" must mean "answering", or the first requests get "no responders".
        # nats-py 2.16 writes flush()'s PING straight to the socket, ahead of SUBs still
        # buffered, so one PONG proves nothing; the second PING goes out after them.
        await self.ctx.nc.flush()
        await self.ctx.nc.flush()
        log.info(
            "policy answering on %s.*; local domains %s; relay %s, allowed group %s",
            subjects.POLICY_PREFIX,
            sorted(self.rules.local_domains),
            self.rules.relay_mode,
            self.rules.allowed_ip_group_name,
        )

    async def stop(self) -> None:
        # The runtime stops the micro service (unsubscribes) and drains the connection.
        pass
