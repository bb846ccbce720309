"""Plain values the ledger takes and returns (no database here).

Sign convention: a `Posting.amount` is signed, **positive = debit, negative = credit**, in
minor units of `currency`. An entry balances when, per currency, its amounts sum to zero.

Balances are reported in the account's *normal* direction: for debit-normal accounts
(asset, expense) `posted = debits - credits`; for credit-normal accounts (liability,
revenue, equity) `posted = credits - debits`. So a seller payable owed 8999 reads 8999, and
`stripe:pending` holding 9999 reads 9999. The raw debit/credit totals are there as well.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Literal

AccountType = Literal["asset", "liability", "revenue", "expense", "equity"]
EntryStatus = Literal["pending", "posted", "voided"]
# How an entry was written: "posted" moves posted balances, "pending" holds (two-phase),
# "void" releases a pending entry and has no postings.
EntryKind = Literal["posted", "pending", "void"]
ACCOUNT_TYPES: tuple[AccountType, ...] = ("asset", "liability", "revenue", "expense", "equity")
DEBIT_NORMAL_TYPES: frozenset[str] = frozenset({"asset", "expense"})


@dataclass(frozen=True)
class Posting:
    """One line of an entry: `amount` > 0 debits `account`, < 0 credits it."""

    account: str
    amount: int
    currency: str


@dataclass(frozen=True)
class EntryDraft:
    """An entry to post. `idempotency_key` makes posting it again a no-op returning the first one."""

    idempotency_key: str
    description: str
    postings: tuple[Posting, ...]
    reverses_entry_id: int | None = None
    metadata: Mapping[str, str] = field(default_factory=dict)
    effective_at: datetime | None = None


@dataclass(frozen=True)
class AccountSpec:
    """An account to open. `must_not_go_negative`: its normal-direction balance stays >= 0."""

    code: str
    type: AccountType
    currency: str
    must_not_go_negative: bool = False
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PostedEntry:
    """An entry as stored.

    `created` is False when an idempotent replay returned the original entry. For a pending
    (two-phase) entry `status` is "pending" until it is resolved, then "posted" or "voided"
    and `resolved_by_entry_id` names the entry that resolved it; its `postings` stay the
    amounts that were held. A void entry has status "voided" and no postings.
    """

    id: int
    idempotency_key: str
    status: EntryStatus
    postings: tuple[Posting, ...]
    description: str
    created: bool
    metadata: Mapping[str, str] = field(default_factory=dict)
    reverses_entry_id: int | None = None
    resolves_entry_id: int | None = None
    resolved_by_entry_id: int | None = None
    effective_at: datetime | None = None
    kind: EntryKind = "posted"


@dataclass(frozen=True)
class Balance:
    """An account's balance in its normal direction (see module docstring); O(1) to read.

    `pending` is the net of unresolved two-phase entries, not included in `posted`. `version`
    grows by one with every change to the balance (for optimistic reads); it is 0 for
    historical reads (`as_of`).
    """

    account: str
    currency: str
    posted: int
    pending: int
    version: int
    type: AccountType = "asset"
    must_not_go_negative: bool = False
    debits_posted: int = 0
    credits_posted: int = 0
    debits_pending: int = 0
    credits_pending: int = 0

    @property
    def available(self) -> int:
        """What a limit sees: posted minus pending amounts leaving the account's normal side."""
        outgoing_pending = self.credits_pending if self.type in DEBIT_NORMAL_TYPES else self.debits_pending
        return self.posted - outgoing_pending


@dataclass(frozen=True)
class Finding:
    """One problem `verify()` found. `code` is stable; the message says what and where."""

    code: str
    message: str
    entry_id: int | None = None
    account: str | None = None
    currency: str | None = None
