"""Local accounts: who may log in, and which local addresses exist.

Local parts are matched without regard to case (as Postfix, Exim and
Stalwart do for local recipients), domains in their normalized form, so
`Alice@Example.TEST.` and `"alice"@example.test` both find alice@example.test.
RFC 5321 lets a server treat local parts that way for its own mailboxes.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.policy.core.address import Mailbox, parse_path
from services.policy.core.errors import AddressError


@dataclass(frozen=True)
class Account:
    address: str  # the canonical recipient and the login name
    password_hash: str | None = None  # None: receives mail, cannot log in
    aliases: tuple[str, ...] = ()


def mailbox_key(mailbox: Mailbox) -> str:
    return f"{mailbox.local.lower()}@{mailbox.domain}"


def _key_of(address: str) -> str:
    mailbox = parse_path(address)
    if mailbox is None or not mailbox.domain or mailbox.route:
        raise AddressError(f"{address!r} is not a local@domain address")
    return mailbox_key(mailbox)


@dataclass(frozen=True)
class Directory:
    accounts: Mapping[str, Account] = field(default_factory=dict)  # by key of its address
    recipients: Mapping[str, str] = field(default_factory=dict)  # key -> account address

    @classmethod
    def build(cls, accounts: Iterable[Account]) -> Directory:
        """AddressError names an address that cannot be parsed; a duplicate is kept first."""
        by_key: dict[str, Account] = {}
        recipients: dict[str, str] = {}
        for account in accounts:
            key = _key_of(account.address)
            by_key.setdefault(key, account)
            recipients.setdefault(key, account.address)
            for alias in account.aliases:
                recipients.setdefault(_key_of(alias), account.address)
        return cls(accounts=by_key, recipients=recipients)

    def recipient(self, mailbox: Mailbox) -> str | None:
        """The account address that receives mail for this local mailbox, if any."""
        if mailbox.route or mailbox.literal:
            return None
        return self.recipients.get(mailbox_key(mailbox))

    def login(self, username: str) -> Account | None:
        """The account whose address is this SASL user name (aliases are no login names)."""
        try:
            mailbox = parse_path(username)
        except AddressError:
            return None
        if mailbox is None or not mailbox.domain or mailbox.route or mailbox.literal:
            return None
        return self.accounts.get(mailbox_key(mailbox))

    def __len__(self) -> int:
        return len(self.accounts)
