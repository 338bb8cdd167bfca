"""The pure decision logic of policy: no I/O, the clock passed in as `now`."""

from services.policy.core.address import AddressError, Mailbox, parse_path, routing_trick
from services.policy.core.decide import decide
from services.policy.core.rules import IpMatcher, PolicyRules

__all__ = [
    "AddressError",
    "IpMatcher",
    "Mailbox",
    "PolicyRules",
    "decide",
    "parse_path",
    "routing_trick",
]
