"""What an RFC 3463 status means for the sender, as a category the text can explain."""

from __future__ import annotations

from typing import Literal

Category = Literal["mailbox", "domain", "full", "size", "policy", "network", "expired", "other"]

# (subject, detail) of X.subject.detail; a subject alone matches every detail.
_BY_CODE: dict[tuple[str, str | None], Category] = {
    ("1", "0"): "mailbox",
    ("1", "1"): "mailbox",
    ("1", "3"): "mailbox",
    ("1", "6"): "mailbox",
    ("2", "0"): "mailbox",  # 550 without an enhanced code
    ("2", "1"): "mailbox",
    ("1", "2"): "domain",
    ("4", "4"): "domain",  # unable to route: the domain has no usable MX
    ("2", "2"): "full",
    ("2", "3"): "size",
    ("3", "4"): "size",
    ("4", "7"): "expired",
    ("7", None): "policy",
    ("4", None): "network",
}

# A temporary status has fewer useful readings: the sender cannot act on most.
_TEMPORARY: dict[Category, Category] = {"full": "full", "policy": "policy", "network": "network"}


def categorize(status: str, temporary: bool = False) -> Category:
    parts = status.strip().split(".")
    if len(parts) != 3:
        return "other"
    _, subject, detail = parts
    found = _BY_CODE.get((subject, detail)) or _BY_CODE.get((subject, None)) or "other"
    if temporary:
        if found == "domain":
            return "network"
        return _TEMPORARY.get(found, "other")
    return found
