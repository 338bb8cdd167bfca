"""The pure decision logic of policy: no I/O, the clock passed in as `now`."""

from services.policy.core.address import AddressError, Mailbox, parse_path, routing_trick
from services.policy.core.clients import canonical_ip
from services.policy.core.decide import NO_FACTS, Facts, decide, is_local, wants_pop3_grant
from services.policy.core.directory import Account, Directory
from services.policy.core.grants import GrantFormatError, Pop3Grant, grant_for_login, later
from services.policy.core.rules import IpMatcher, PolicyRules

__all__ = [
    "NO_FACTS",
    "Account",
    "AddressError",
    "Directory",
    "Facts",
    "GrantFormatError",
    "IpMatcher",
    "Mailbox",
    "PolicyRules",
    "Pop3Grant",
    "canonical_ip",
    "decide",
    "grant_for_login",
    "is_local",
    "later",
    "parse_path",
    "routing_trick",
    "wants_pop3_grant",
]
