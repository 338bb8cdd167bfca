"""What policy records when the shadow configuration would have decided otherwise.

Policy publishes one `ShadowDifference` per differing decision on
`subjects.shadow_subject(shadow_revision, stage)`; `mailbus config
shadow-report` reads them back and summarises them with `summarise`. The
addresses come from clients: whoever shows them must escape them.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

from pydantic import BaseModel, ConfigDict

EXAMPLES_PER_KIND = 3


class ShadowDifference(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    at: datetime
    stage: str
    session_id: str
    client_ip: str
    mail_from: str | None = None
    rcpt: str | None = None
    active_revision: int
    active_rule: str
    active_reply: str
    shadow_revision: int
    shadow_rule: str
    shadow_reply: str

    @property
    def kind(self) -> tuple[str, str, str]:
        return (self.stage, self.active_rule, self.shadow_rule)

    @property
    def would_refuse(self) -> bool:
        """The shadow refuses what the active configuration accepted."""
        return self.active_reply[:1] == "2" and self.shadow_reply[:1] != "2"


class ShadowKind(BaseModel):
    stage: str
    active_rule: str
    shadow_rule: str
    count: int
    examples: list[ShadowDifference]


class ShadowReport(BaseModel):
    shadow_revision: int
    differences: int
    would_refuse: int
    would_accept: int
    by_stage: dict[str, int]
    kinds: list[ShadowKind]


def summarise(revision: int, found: list[ShadowDifference]) -> ShadowReport:
    """Counts by stage and by (stage, active rule, shadow rule), most frequent first."""
    kinds = Counter(d.kind for d in found)
    examples: dict[tuple[str, str, str], list[ShadowDifference]] = {}
    for d in found:
        bucket = examples.setdefault(d.kind, [])
        if len(bucket) < EXAMPLES_PER_KIND:
            bucket.append(d)
    refuse = sum(1 for d in found if d.would_refuse)
    accept = sum(1 for d in found if d.shadow_reply[:1] == "2" and d.active_reply[:1] != "2")
    return ShadowReport(
        shadow_revision=revision,
        differences=len(found),
        would_refuse=refuse,
        would_accept=accept,
        by_stage=dict(Counter(d.stage for d in found).most_common()),
        kinds=[
            ShadowKind(
                stage=k[0], active_rule=k[1], shadow_rule=k[2], count=n, examples=examples[k]
            )
            for k, n in kinds.most_common()
        ],
    )
