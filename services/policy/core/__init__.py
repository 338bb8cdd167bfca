"""The pure decision logic of policy: no I/O, the clock passed in as `now`."""

from libs.common.contract.policy import canonical_ip
from services.policy.core.address import AddressError, Mailbox, parse_path, routing_trick
from services.policy.core.blocks import Block, BlockFormatError, blocked, harvest_block
from services.policy.core.decide import (
    NO_FACTS,
    Facts,
    decide,
    is_local,
    needs,
    wants_pop3_grant,
)
from services.policy.core.directory import Account, Directory
from services.policy.core.grants import GrantFormatError, Pop3Grant, grant_for_login, later
from services.policy.core.rules import IpMatcher, PolicyRules, SecurityLimits
from services.policy.core.security import Needs, SenderDomain, counts_message, counts_unknown
from services.policy.core.window import HOUR, CountFormatError, SlidingCount, Window

__all__ = [
    "HOUR",
    "NO_FACTS",
    "Account",
    "AddressError",
    "Block",
    "BlockFormatError",
    "CountFormatError",
    "Directory",
    "Facts",
    "GrantFormatError",
    "IpMatcher",
    "Mailbox",
    "Needs",
    "PolicyRules",
    "Pop3Grant",
    "SecurityLimits",
    "SenderDomain",
    "SlidingCount",
    "Window",
    "blocked",
    "canonical_ip",
    "counts_message",
    "counts_unknown",
    "decide",
    "grant_for_login",
    "harvest_block",
    "is_local",
    "later",
    "needs",
    "parse_path",
    "routing_trick",
    "wants_pop3_grant",
]
