"""One table of the replies mailbus sends, and one default status per basic code."""

from __future__ import annotations

import pytest

from libs.common.contract import replies
from libs.common.contract.policy import POLICY_UNAVAILABLE, PolicyDecision, action_of
from libs.common.contract.replies import DEFAULT_STATUS, SmtpReply
from services.delivery.core.replies import enhanced_status
from services.ingress.core.replies import enhance, too_big


def test_421_reads_and_is_sent_as_4_3_2() -> None:
    # ingress said 4.3.0 and delivery 4.3.2: RFC 3463's X.3.2 names "not accepting messages".
    assert DEFAULT_STATUS[421] == "4.3.2"
    assert enhance("421 closing") == "421 4.3.2 closing"
    assert enhanced_status(421, "closing") == "4.3.2"


@pytest.mark.parametrize("code", [421, 450, 451, 452, 551, 553, 554])
def test_delivery_reads_a_basic_code_with_the_default_ingress_sends(code: int) -> None:
    assert enhanced_status(code, "no status here") == DEFAULT_STATUS[code]
    assert enhance(f"{code} no status here") == f"{code} {DEFAULT_STATUS[code]} no status here"


@pytest.mark.parametrize(
    ("code", "sent", "read"),
    [(550, "5.0.0", "5.2.0"), (552, "5.3.4", "5.2.2")],
)
def test_a_remote_550_or_552_speaks_of_the_mailbox(code: int, sent: str, read: str) -> None:
    assert enhance(f"{code} x") == f"{code} {sent} x"
    assert enhanced_status(code, "x") == read


@pytest.mark.parametrize(
    ("code", "action"),
    [
        (235, "accept"),
        (250, "accept"),
        (421, "disconnect"),
        (450, "defer"),
        (451, "defer"),
        (454, "defer"),
        (501, "reject"),
        (554, "reject"),
    ],
)
def test_a_decision_acts_as_its_reply_code_says(code: int, action: str) -> None:
    assert action_of(code) == action
    decision = PolicyDecision.of(SmtpReply(code, f"{code // 100}.0.0", "text"), "rule")
    assert decision.action == action
    assert decision.smtp_reply == f"{code} {code // 100}.0.0 text"


def test_policy_unavailable_is_the_tables_reply() -> None:
    assert POLICY_UNAVAILABLE.smtp_reply == str(replies.POLICY_UNAVAILABLE)
    assert POLICY_UNAVAILABLE.smtp_reply == "451 4.3.0 Policy service unavailable, try again later"
    assert (POLICY_UNAVAILABLE.action, POLICY_UNAVAILABLE.rule) == ("defer", "policy_unavailable")


def test_ingress_and_policy_refuse_a_big_message_alike() -> None:
    # Policy at MAIL (SIZE=), ingress after the final dot: one text, ingress adds what it did.
    assert str(replies.too_big(1000)) == "552 5.3.4 Message size exceeds the limit of 1000 bytes"
    assert too_big(1000) == f"{replies.too_big(1000)}; nothing was stored"
