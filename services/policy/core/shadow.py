"""The shadow policy: the same query decided under a second configuration, compared.

Only the active configuration's decision is enforced and counted; the shadow's
is computed from the same facts (looked up once, for what either side needs)
and recorded when it differs, so an operator sees what a change would refuse
before anyone is refused.
"""

from __future__ import annotations

from datetime import datetime

from libs.common.contract.policy import PolicyDecision, PolicyQuery
from libs.common.contract.shadow import ShadowDifference
from services.policy.core.security import Needs

# The shadow is compared where a decision is made from rules and facts alone; a login's
# password check is not repeated for it.
SHADOW_STAGES = frozenset({"connect", "helo", "mail", "rcpt", "data"})


def union(a: Needs, b: Needs) -> Needs:
    """The facts either side wants, so both decide from the same looked-up world."""
    return Needs(
        block=a.block or b.block,
        connections=a.connections or b.connections,
        messages=a.messages or b.messages,
        sender_domain=a.sender_domain or b.sender_domain,
        failed_logins=a.failed_logins or b.failed_logins,
    )


def differs(active: PolicyDecision, shadow: PolicyDecision) -> bool:
    return (active.action, active.code, active.rule) != (shadow.action, shadow.code, shadow.rule)


def compare(
    query: PolicyQuery,
    active: PolicyDecision,
    shadow: PolicyDecision,
    revisions: tuple[int, int],
    now: datetime,
) -> ShadowDifference | None:
    """The record of a differing pair of decisions; None when they agree.

    `revisions` is (active, shadow).
    """
    if not differs(active, shadow):
        return None
    return ShadowDifference(
        at=now,
        stage=query.stage,
        session_id=query.session.session_id,
        client_ip=query.session.client_ip,
        mail_from=query.mail_from,
        rcpt=query.rcpt,
        active_revision=revisions[0],
        active_rule=active.rule,
        active_reply=active.smtp_reply,
        shadow_revision=revisions[1],
        shadow_rule=shadow.rule,
        shadow_reply=shadow.smtp_reply,
    )
