"""Wiring of the policy service: the config turned into PolicyRules, the endpoints registered."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from libs.common import subjects
from libs.common.config import Config, ConfigError
from libs.common.runtime import Context
from libs.common.userhash import is_argon2id
from services.policy.adapters.nats_micro import Lookups, PolicyEndpoints, utc_now
from services.policy.adapters.passwords import PasswordChecker
from services.policy.adapters.pop3_logins import Pop3LoginConsumer
from services.policy.adapters.stores import FailedLoginCounter, GrantStore
from services.policy.core import Account, AddressError, PolicyRules

log = logging.getLogger(__name__)


def rules_from_config(config: Config) -> PolicyRules:
    group_name = config.relay.allowed_ip_group
    group = None
    if group_name is not None:
        group = config.ip_group(group_name)
        if group is None:
            # The config model should have caught this; never fall back to "no group" silently.
            raise ConfigError([f"relay.allowed_ip_group: no ip_groups entry named {group_name!r}"])
    accounts = [
        Account(address=u.address, password_hash=u.password_hash, aliases=tuple(u.aliases))
        for u in config.users
    ]
    pop3 = config.relay.pop3_before_smtp
    try:
        return PolicyRules.build(
            local_domains=config.server.local_domains,
            relay_mode=config.relay.mode,
            allowed_ip_group=group,
            relay_for_authenticated=config.relay.smtp_auth,
            allowed_ip_group_name=group_name,
            pop3_grant=pop3.duration if pop3.enabled else None,
            accounts=accounts,
            postmaster=config.server.postmaster_address,
        )
    except AddressError as exc:
        raise ConfigError([f"users: {exc.reason}"]) from None


def _warn_about_accounts(config: Config) -> None:
    for user in config.users:
        if user.password_hash is not None and not is_argon2id(user.password_hash):
            log.warning(
                "users: %s cannot log in: its password_hash is no argon2id hash "
                "(make one with `mailbus user hash`)",
                user.address,
            )


class PolicyService:
    def __init__(self, ctx: Context, clock: Callable[[], datetime] = utc_now) -> None:
        self.ctx = ctx
        self.rules = rules_from_config(ctx.config)
        self.grants = GrantStore(ctx.js)
        self.passwords = PasswordChecker()
        lookups = Lookups(
            passwords=self.passwords,
            grants=self.grants if self.rules.pop3_grant is not None else None,
            failures=FailedLoginCounter(ctx.js),
        )
        self.endpoints = PolicyEndpoints(self.rules, clock, lookups)
        self.pop3_logins: Pop3LoginConsumer | None = None
        if self.rules.pop3_grant is not None:
            self.pop3_logins = Pop3LoginConsumer(ctx.js, self.grants, self.rules.pop3_grant, clock)

    async def start(self) -> None:
        if self.rules.relay_mode == "open":
            log.warning("open relay: anyone may send anywhere (relay.mode: open)")
        _warn_about_accounts(self.ctx.config)
        if self.pop3_logins is not None:
            await self.pop3_logins.start()
        await self.endpoints.register(self.ctx.micro)
        # "Started" must mean "answering", or the first requests get "no responders".
        # nats-py 2.16 writes flush()'s PING straight to the socket, ahead of SUBs still
        # buffered, so one PONG proves nothing; the second PING goes out after them.
        await self.ctx.nc.flush()
        await self.ctx.nc.flush()
        log.info(
            "policy answering on %s.*; local domains %s; relay %s, allowed group %s, "
            "smtp_auth %s, pop3-before-smtp %s; %d account(s)",
            subjects.POLICY_PREFIX,
            sorted(self.rules.local_domains),
            self.rules.relay_mode,
            self.rules.allowed_ip_group_name,
            self.rules.relay_for_authenticated,
            self.rules.pop3_grant or "off",
            len(self.rules.directory),
        )

    async def stop(self) -> None:
        # The runtime stops the micro service (unsubscribes) and drains the connection
        # after this; answers still being computed go out first.
        if self.pop3_logins is not None:
            await self.pop3_logins.stop()
        await self.endpoints.drain()
        self.passwords.close()
