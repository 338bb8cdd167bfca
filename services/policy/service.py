"""Wiring of the policy service: the config turned into PolicyRules, the endpoints registered."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime

from libs.common.config import Config, ConfigError, IpGroup
from libs.common.contract import subjects
from libs.common.contract.shadow import ShadowDifference
from libs.common.mail.userhash import is_argon2id
from libs.common.runtime.liveconfig import Commit
from libs.common.runtime.service import Context
from services.policy.adapters.admin import BlocksEndpoints
from services.policy.adapters.antispam import AntispamChecks
from services.policy.adapters.blocks import BlockStore
from services.policy.adapters.connections import ConnectionCounter, Connections
from services.policy.adapters.counters import SlidingCounters
from services.policy.adapters.dns import SenderDomainResolver, sender_domain_resolver
from services.policy.adapters.facts import FactFinder
from services.policy.adapters.nats_micro import Lookups, PolicyEndpoints, utc_now
from services.policy.adapters.passwords import PasswordChecker
from services.policy.adapters.pop3_logins import Pop3LoginConsumer
from services.policy.adapters.spamd import SpamdScanner
from services.policy.adapters.spf import SpfChecker
from services.policy.adapters.stores import FailedLoginCounter, GrantStore
from services.policy.core import HOUR, Account, AddressError, PolicyRules, SecurityLimits
from services.policy.core.antispam import AntispamRules

log = logging.getLogger(__name__)


def _group(config: Config, key: str, name: str | None) -> IpGroup | None:
    if name is None:
        return None
    group = config.ip_group(name)
    if group is None:
        # The config model should have caught this; never fall back to "no group" silently.
        raise ConfigError([f"{key}: no ip_groups entry named {name!r}"])
    return group


def limits_from_config(config: Config) -> SecurityLimits:
    sec = config.security
    return SecurityLimits(
        exempt_ip_group=_group(config, "security.exempt_ip_group", sec.exempt_ip_group),
        exempt_ip_group_name=sec.exempt_ip_group,
        max_connections_per_ip=sec.max_connections_per_ip,
        max_messages_per_hour_per_ip=sec.max_messages_per_hour_per_ip,
        max_unknown_recipients=sec.directory_harvest.max_unknown_recipients,
        block_for=sec.directory_harvest.block_for,
        require_sender_domain_dns=sec.require_sender_domain_dns,
        max_recipients=sec.max_recipients,
        max_failed_commands=sec.max_failed_commands,
        max_auth_failures_per_ip=sec.max_auth_failures_per_ip,
        max_message_size=sec.max_message_size,
        max_received_headers=sec.max_received_headers,
    )


def antispam_from_config(config: Config) -> AntispamRules:
    section = config.antispam
    return AntispamRules(
        spf=section.spf,
        spf_fail_action=section.spf_fail_action,
        spf_softfail_action=section.spf_softfail_action,
        scan=section.spamd is not None,
        spamd_max_size=section.spamd_max_size,
        spamd_failure=section.spamd_failure,
        spam_tag_score=section.spam_tag_score,
        spam_reject_score=section.spam_reject_score,
        for_allowed_group=config.relay.antispam_for_allowed_group,
    )


def antispam_checks(config: Config, rules: PolicyRules, grants: GrantStore) -> AntispamChecks:
    section = config.antispam
    spf = None
    if section.spf:
        # One SPF check must end before ingress gives up on the MAIL answer (policy.timeout):
        # a slow domain then gets SPF's own temperror reply instead of "policy unavailable".
        budget = max(1.0, config.policy.timeout.total_seconds() - 1.0)
        spf = SpfChecker(config.dns, config.server.hostname, min(budget, SPF_MAX_SECONDS))
    spamd = None
    if section.spamd is not None:
        spamd = SpamdScanner(section.spamd, section.spamd_timeout.total_seconds())
    return AntispamChecks(rules, spf, spamd, grants)


# A revision's predecessor's antispam checks are closed this long after the swap.
OLD_CHECKS_CLOSE_S = 60.0

# RFC 7208 section 4.6.4: at least 20 seconds for one whole check, at most needed.
SPF_MAX_SECONDS = 20.0


def rules_from_config(config: Config) -> PolicyRules:
    group_name = config.relay.allowed_ip_group
    group = _group(config, "relay.allowed_ip_group", group_name)
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
            limits=limits_from_config(config),
            plaintext_login_listeners=[
                entry.name for entry in config.pop3_listeners if entry.tls == "none"
            ],
            antispam=antispam_from_config(config),
        )
    except AddressError as exc:
        raise ConfigError([f"users: {exc.reason}"]) from None


def _resolver(
    config: Config, rules: PolicyRules, shadow: bool = False
) -> SenderDomainResolver | None:
    """Sender-domain look-ups, when the rules (or a shadow's, `shadow`) check them."""
    if rules.limits.require_sender_domain_dns or shadow:
        return sender_domain_resolver(config.dns)
    return None


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
        failures = FailedLoginCounter(ctx.js)
        counters = SlidingCounters(ctx.js, HOUR)
        blocks = BlockStore(ctx.js)
        self.connections = Connections(ctx.nc, ConnectionCounter(ctx.js))
        self.facts = FactFinder(
            self.rules,
            counters=counters,
            blocks=blocks,
            connections=self.connections,
            dns=_resolver(ctx.config, self.rules),
            failures=failures,
        )
        self.antispam = antispam_checks(ctx.config, self.rules, self.grants)
        lookups = Lookups(
            passwords=self.passwords,
            # Always there: whether a grant is looked up is the rules' (live) decision.
            grants=self.grants,
            failures=failures,
            facts=self.facts,
            antispam=self.antispam,
        )
        self.endpoints = PolicyEndpoints(self.rules, clock, lookups)
        self.endpoints.record_difference = self._record_difference
        self._recording: set[asyncio.Task[None]] = set()
        ctx.live.on_change(self._prepare)
        ctx.live.on_shadow(self._shadow)
        self.blocks_api = BlocksEndpoints(blocks, counters, clock)
        self._blocks = blocks
        self.pop3_logins: Pop3LoginConsumer | None = None
        if self.rules.pop3_grant is not None:
            self.pop3_logins = Pop3LoginConsumer(ctx.js, self.grants, self.rules.pop3_grant, clock)

    def _prepare(self, config: Config, revision: int) -> Commit:
        """Rules of a new revision, built whole before anything is swapped."""
        rules = rules_from_config(config)
        resolver = _resolver(config, rules, shadow=self._shadow_checks_dns())
        checks = antispam_checks(config, rules, self.grants)

        def commit() -> None:
            old, self.antispam = self.antispam, checks
            self.rules = rules
            self.facts.use(rules, resolver)
            self.endpoints.use(rules, revision)
            self.endpoints.antispam(checks)
            # Checks still running on the old SPF pool finish first (within policy.timeout).
            asyncio.get_running_loop().call_later(OLD_CHECKS_CLOSE_S, old.close)
            _warn_about_accounts(config)

        return commit

    def _shadow(self, config: Config | None, revision: int) -> None:
        if config is None:
            self.endpoints.shadow = None
            log.info("shadow configuration cleared")
            return
        rules = rules_from_config(config)
        self.endpoints.shadow = (rules, revision)
        if rules.limits.require_sender_domain_dns:
            self.facts.use(self.rules, _resolver(self.ctx.config, self.rules, shadow=True))
        log.info("shadow configuration revision %d evaluated beside the active one", revision)

    def _shadow_checks_dns(self) -> bool:
        shadow = self.endpoints.shadow
        return shadow is not None and shadow[0].limits.require_sender_domain_dns

    def _record_difference(self, found: ShadowDifference) -> None:
        subject = subjects.shadow_subject(found.shadow_revision, found.stage)

        async def publish() -> None:
            try:
                await self.ctx.js.publish(subject, found.model_dump_json().encode())
            except Exception as exc:
                log.warning("shadow difference not recorded: %s: %s", type(exc).__name__, exc)

        task = asyncio.create_task(publish())
        self._recording.add(task)
        task.add_done_callback(self._recording.discard)

    async def start(self) -> None:
        if self.rules.relay_mode == "open":
            log.warning("open relay: anyone may send anywhere (relay.mode: open)")
        _warn_about_accounts(self.ctx.config)
        if self.pop3_logins is not None:
            await self.pop3_logins.start()
        # Before the endpoints: the first connect query already sees the other instances.
        await self.connections.start()
        await self.endpoints.register(self.ctx.micro)
        await self.blocks_api.register(self.ctx.micro)
        # "Started" must mean "answering", or the first requests get "no responders".
        # nats-py 2.16 writes flush()'s PING straight to the socket, ahead of SUBs still
        # buffered, so one PONG proves nothing; the second PING goes out after them.
        await self.ctx.nc.flush()
        await self.ctx.nc.flush()
        # After the endpoints: they answer while the workers start (a login meanwhile
        # waits for one, within its deadline), so starting them delays no other stage.
        await self.passwords.start()
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
        limits = self.rules.limits
        log.info(
            "limits per client address (0 = none): %d connections, %d messages/hour, "
            "%d unknown recipients then blocked for %s; sender domain DNS %s; "
            "exempt group %s",
            limits.max_connections_per_ip,
            limits.max_messages_per_hour_per_ip,
            limits.max_unknown_recipients,
            limits.block_for,
            "required" if limits.require_sender_domain_dns else "not checked",
            limits.exempt_ip_group_name,
        )
        section = self.ctx.config.antispam
        log.info(
            "antispam: spf %s (fail %s, softfail %s); spamd %s; allowed group %s",
            "on" if section.spf else "off",
            section.spf_fail_action,
            section.spf_softfail_action,
            section.spamd or "off",
            "checked" if self.rules.antispam.for_allowed_group else "skipped",
        )

    async def stop(self) -> None:
        # The runtime stops the micro service (unsubscribes) and drains the connection
        # after this; answers still being computed go out first.
        if self.pop3_logins is not None:
            await self.pop3_logins.stop()
        await self.endpoints.drain()
        await self.connections.stop()
        if self._recording:
            await asyncio.gather(*self._recording, return_exceptions=True)
        await self._blocks.close()
        await self.passwords.close()
        self.antispam.close()
