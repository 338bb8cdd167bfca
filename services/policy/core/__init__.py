"""The pure decision logic of policy: no I/O, the clock passed in as `now`."""

from libs.common.contract.policy import canonical_ip
from services.policy.core.address import Mailbox, parse_path, routing_trick
from services.policy.core.blocks import Block, blocked, harvest_block
from services.policy.core.decide import (
    NO_FACTS,
    Facts,
    decide,
    is_local,
    needs,
    wants_pop3_grant,
)
from services.policy.core.directory import Account, Directory
from services.policy.core.errors import (
    AddressError,
    BlockFormatError,
    ContentionError,
    CountFormatError,
    GrantFormatError,
    GrantsUnavailable,
    LimitsUnavailable,
    PolicyError,
    RecordFormatError,
    Unavailable,
)
from services.policy.core.grants import Pop3Grant, grant_for_login, later
from services.policy.core.rules import IpMatcher, PolicyRules, SecurityLimits
from services.policy.core.security import (
    Needs,
    SenderDomain,
    counts_message,
    counts_unknown,
    harvest_answer,
)
from services.policy.core.window import HOUR, SlidingCount, Window

__all__ = [
    "HOUR",
    "NO_FACTS",
    "Account",
    "AddressError",
    "Block",
    "BlockFormatError",
    "ContentionError",
    "CountFormatError",
    "Directory",
    "Facts",
    "GrantFormatError",
    "GrantsUnavailable",
    "IpMatcher",
    "LimitsUnavailable",
    "Mailbox",
    "Needs",
    "PolicyError",
    "PolicyRules",
    "Pop3Grant",
    "RecordFormatError",
    "SecurityLimits",
    "SenderDomain",
    "SlidingCount",
    "Unavailable",
    "Window",
    "blocked",
    "canonical_ip",
    "counts_message",
    "counts_unknown",
    "decide",
    "grant_for_login",
    "harvest_answer",
    "harvest_block",
    "is_local",
    "later",
    "needs",
    "parse_path",
    "routing_trick",
    "wants_pop3_grant",
]
