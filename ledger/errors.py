"""Ledger errors: one class per thing a caller can get wrong, each with a stable `code`.

`code` is a short snake_case string that never changes (the API maps it to its error body),
`param` names the offending field or value when there is one, and the message says what
happened in a full sentence. Every ledger error is a business error: retrying the same call
gives the same answer, so a Temporal activity should raise it as non-retryable.

Errors detected by the database (unknown account, limit, idempotency conflict found at
insert time) leave the caller's transaction aborted: roll it back. Errors found by input
validation are raised before any SQL is sent, so the transaction stays usable.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base class. `code` is stable; `param` is the field or value at fault (may be None)."""

    code = "ledger_error"

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, param={self.param!r}, message={self.message!r})"


class InvalidAmount(LedgerError):
    """Zero, negative where not meaningful, not an int, or outside the signed 64-bit range."""

    code = "invalid_amount"


class UnsupportedCurrency(LedgerError):
    """Not an ISO 4217 code this ledger knows the exponent of."""

    code = "unsupported_currency"


class CurrencyMismatch(LedgerError):
    """A posting's currency differs from its account's, or two amounts in different currencies meet."""

    code = "currency_mismatch"


class InvalidSplit(LedgerError):
    """Split shares or amounts that cannot describe the total exactly."""

    code = "invalid_split"


class InvalidEntry(LedgerError):
    """An entry that is malformed: fewer than two postings, bad metadata, bad description."""

    code = "invalid_entry"


class UnbalancedEntry(InvalidEntry):
    """Debits and credits of an entry differ in some currency."""

    code = "unbalanced_entry"


class InvalidAccount(LedgerError):
    """A malformed account code or account specification."""

    code = "invalid_account"


class UnknownAccount(LedgerError):
    """A posting names an account that was never opened."""

    code = "unknown_account"


class AccountConflict(LedgerError):
    """An account exists already with another type, currency or limit."""

    code = "account_conflict"


class KeyTooLong(LedgerError):
    """An idempotency key longer than the ledger stores (or empty)."""

    code = "idempotency_key_invalid"


class IdempotencyConflict(LedgerError):
    """The idempotency key was used before for a different entry."""

    code = "idempotency_conflict"


class LimitExceeded(LedgerError):
    """The entry would take an account past its balance limit (e.g. a seller payable below zero)."""

    code = "limit_exceeded"


class UnknownEntry(LedgerError):
    """No entry has that id."""

    code = "unknown_entry"


class EntryNotPending(LedgerError):
    """A two-phase operation on an entry that is not pending (already posted, voided, or never pending)."""

    code = "entry_not_pending"


class AmountExceedsPending(LedgerError):
    """Posting more than the pending entry holds."""

    code = "amount_exceeds_pending"


class NotReversible(LedgerError):
    """The entry cannot be reversed: it is pending, a void, already reversed, or itself a reversal."""

    code = "not_reversible"


class AppendOnlyViolation(LedgerError):
    """Something tried to UPDATE or DELETE ledger history."""

    code = "append_only"


# The SQLSTATE codes the database functions and triggers raise (class "LG", ours), mapped to
# the error classes above. `ledger.ledger` translates them; the SQL lives in migration 0002.
SQLSTATE_ERRORS: dict[str, type[LedgerError]] = {
    "LG001": UnknownAccount,
    "LG002": CurrencyMismatch,
    "LG003": IdempotencyConflict,
    "LG004": LimitExceeded,
    "LG005": EntryNotPending,
    "LG006": AmountExceedsPending,
    "LG007": UnbalancedEntry,
    "LG008": InvalidEntry,
    "LG009": AppendOnlyViolation,
    "LG010": UnknownEntry,
    "LG011": NotReversible,
    "LG012": AccountConflict,
    "22003": InvalidAmount,  # numeric_value_out_of_range: a balance would leave the 64-bit range
}
