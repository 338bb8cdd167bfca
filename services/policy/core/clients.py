"""The client address as one canonical string: the key of grants, counters and groups.

Ingress keys its connection leases the same way, so the function lives in the
shared contract (`libs.common.policy_api`); this name stays for the core's callers.
"""

from __future__ import annotations

from libs.common.policy_api import canonical_ip

__all__ = ["canonical_ip"]
