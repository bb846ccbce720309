"""Penny's chart of accounts and the entries a marketplace payment makes in it.

Every account holds one currency, so its code ends with the lowercase currency code (a
platform taking USD and EUR has `stripe:pending:usd` and `stripe:pending:eur`). Accounts:

Code (without the `:<currency>` suffix)   type       limit: meaning
- `stripe:pending`                        asset:     money Stripe holds for us, not yet available
                                                     (charges, minus fees, transfers, refunds).
- `stripe:available`                      asset:     money Stripe holds for us that we can pay out.
- `stripe:disputed`                       asset:     money Stripe withdrew for an open dispute.
- `bank:platform`                         asset:     the platform's bank account (payouts land here).
- `payment:<payment_id>:clearing`         liability, must not go negative: captured from an
                                                     authorisation hold, not yet split (zero after capture).
- `payment:<payment_id>:refund_recoverable` asset, must not go negative: recipients' shares of a
                                                     refund, not yet back by transfer reversal (zero after).
- `seller:<acct>:payable`                 liability, must not go negative: what we owe a connected
                                                     account; a transfer pays it.
- `tax:payable`                           liability: tax collected, owed to the authority.
- `platform:fees`                         revenue:   the platform's commission.
- `platform:processing_fees`              expense:   Stripe's processing fees.
- `platform:disputes`                     expense:   dispute fees and lost disputes.
- `platform:equity`                       equity:    owner's funding, opening balances, operator write-offs.

Only per-seller and per-payment accounts carry a limit: an account with a limit is one
balance row that every entry touching it locks, so a limit on a platform-wide account
(tax:payable, stripe:*) would make every capture wait for the previous one's commit. Those
accounts instead spread their balance over slot rows (see migration 0002) and are checked by
`verify()`. The limits are what catches a wrong order of operations: a seller payable cannot go below
zero (a transfer cannot pay more than is owed); a refund's recoverable account cannot give
back more than the refund took from the recipients; a payment's clearing account cannot hand
out more than was captured from its hold.

Every constructor below is a pure function from a domain event to an `EntryDraft`. Its
idempotency key is `payment:<payment_id>:<step>` (payouts: `payout:<payout_id>`) and its
metadata carries `{"payment_id": ...}`, so `entries_by_metadata("payment_id", id)` lists a
payment's history. Postings are signed: positive debits, negative credits.

Worked example: a buyer pays 9999 USD, platform fee 10% (1000 bps), no tax, one seller
(`compute_split` gives fee 1000, seller 8999; Stripe charges 320).

Automatic capture (no hold):

    capture                Dr stripe:pending:usd 9999 / Cr platform:fees:usd 1000
                                                      / Cr seller:acct_1:payable:usd 8999
    processing_fee         Dr platform:processing_fees:usd 320 / Cr stripe:pending:usd 320
    transfer_to_connected  Dr seller:acct_1:payable:usd 8999 / Cr stripe:pending:usd 8999
    settlement             Dr stripe:available:usd 680 / Cr stripe:pending:usd 680
    payout                 Dr bank:platform:usd 680 / Cr stripe:available:usd 680

    End: bank:platform 680 = platform:fees 1000 - platform:processing_fees 320; the
    seller payable and both Stripe balances are back to 0.

Manual capture (authorise now, capture later), same payment:

    authorization_hold     PENDING Dr stripe:pending:usd 9999 / Cr payment:p1:clearing:usd 9999
                           (posted balances unchanged; both accounts show 9999 pending)
    post_pending_final(hold, 9999, authorization_capture_key("p1"))
                           Dr stripe:pending:usd 9999 / Cr payment:p1:clearing:usd 9999
    capture(..., after_hold=True)
                           Dr payment:p1:clearing:usd 9999 / Cr platform:fees:usd 1000
                                                          / Cr seller:acct_1:payable:usd 8999

    The end state equals the automatic capture's; the clearing account is back to 0.
    Partial capture of 5000: post_pending_final(hold, 5000) posts 5000 and releases all
    9999 held (so the 4999 never captured is gone from pending), and the capture uses the
    split of 5000 (fee 500, seller 4500). Cancel or expiry: void_pending(hold) releases 9999.

Refunds (the parts come from the refund policy; proportional by default, `refund_split`): a
3333 refund of the payment above takes 333 back from platform:fees and 3000 from the seller,
whose share was paid out already, so it is recoverable until the transfer reversal lands:

    refund                 Dr platform:fees:usd 333 / Dr payment:p1:refund_recoverable:usd 3000
                                                    / Cr stripe:pending:usd 3333
    refund_recovery        Dr stripe:pending:usd 3000 / Cr payment:p1:refund_recoverable:usd 3000

    If Stripe later reports the refund failed: refund_failed gives the 3333 back to
    stripe:pending, the 333 back to platform:fees, and the 3000 back to the seller's payable
    (it was pulled back, so it is owed again) or to the recoverable account (not yet pulled).
For a second partial refund pass the split that remains (`ledger.money.subtract_split`).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ledger.errors import InvalidAccount, InvalidAmount
from ledger.models import AccountSpec, AccountType, EntryDraft, Posting
from ledger.money import CaptureSplit, check_amount, exponent, scale_split

IDENTIFIER_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{1,100}$")

# Account names (before the currency suffix) with their type and limit.
FIXED_ACCOUNTS: dict[str, tuple[AccountType, bool]] = {
    "stripe:pending": ("asset", False),
    "stripe:available": ("asset", False),
    "stripe:disputed": ("asset", False),
    "bank:platform": ("asset", False),
    "tax:payable": ("liability", False),
    "platform:fees": ("revenue", False),
    "platform:processing_fees": ("expense", False),
    "platform:disputes": ("expense", False),
    "platform:equity": ("equity", False),
}
_PATTERNED_ACCOUNTS: tuple[tuple[re.Pattern[str], AccountType, bool], ...] = (
    (re.compile(r"^seller:[A-Za-z0-9_\-]{1,100}:payable$"), "liability", True),
    (re.compile(r"^payment:[A-Za-z0-9_\-]{1,100}:clearing$"), "liability", True),
    (re.compile(r"^payment:[A-Za-z0-9_\-]{1,100}:refund_recoverable$"), "asset", True),
)


def _identifier(value: str, param: str) -> str:
    if not isinstance(value, str) or not IDENTIFIER_PATTERN.match(value):
        raise InvalidAccount(f"{param} {value!r} must be 1..100 letters, digits, '_' or '-'", param=param)
    return value


def account(name: str, currency: str) -> str:
    """The code of chart account `name` in `currency`: account("stripe:pending", "USD") -> "stripe:pending:usd"."""
    exponent(currency)
    return f"{name}:{currency.lower()}"


def stripe_pending(currency: str) -> str:
    return account("stripe:pending", currency)


def stripe_available(currency: str) -> str:
    return account("stripe:available", currency)


def seller_payable(account_id: str, currency: str) -> str:
    return account(f"seller:{_identifier(account_id, 'account_id')}:payable", currency)


def payment_clearing(payment_id: str, currency: str) -> str:
    return account(f"payment:{_identifier(payment_id, 'payment_id')}:clearing", currency)


def refund_recoverable(payment_id: str, currency: str) -> str:
    return account(f"payment:{_identifier(payment_id, 'payment_id')}:refund_recoverable", currency)


def account_spec(code: str, currency: str) -> AccountSpec:
    """The AccountSpec of a chart account code (type and limit follow from its pattern)."""
    exponent(currency)
    suffix = f":{currency.lower()}"
    if not isinstance(code, str) or not code.endswith(suffix):
        raise InvalidAccount(f"account {code!r} does not end with the currency suffix {suffix!r}", param="account")
    name = code[: -len(suffix)]
    if name in FIXED_ACCOUNTS:
        account_type, must_not_go_negative = FIXED_ACCOUNTS[name]
        return AccountSpec(code, account_type, currency, must_not_go_negative)
    for pattern, account_type, must_not_go_negative in _PATTERNED_ACCOUNTS:
        if pattern.match(name):
            return AccountSpec(code, account_type, currency, must_not_go_negative)
    raise InvalidAccount(f"account {code!r} is not in the chart of accounts", param="account")


def accounts_for(draft: EntryDraft) -> list[AccountSpec]:
    """The accounts `draft` posts to, to open before posting it (open_accounts is idempotent)."""
    specs: dict[str, AccountSpec] = {}
    for posting in draft.postings:
        specs.setdefault(posting.account, account_spec(posting.account, posting.currency))
    return list(specs.values())


# ---------------------------------------------------------------------------------------------
# Entry constructors


def _draft(key: str, description: str, postings: Sequence[Posting], metadata: dict[str, str]) -> EntryDraft:
    return EntryDraft(idempotency_key=key, description=description, postings=tuple(postings), metadata=metadata)


def _payment(payment_id: str) -> tuple[str, dict[str, str]]:
    _identifier(payment_id, "payment_id")
    return f"payment:{payment_id}", {"payment_id": payment_id}


def _positive(amount: int, param: str) -> int:
    return check_amount(amount, param=param)


def authorization_capture_key(payment_id: str) -> str:
    """Idempotency key for post_pending_final on the payment's authorisation hold."""
    return f"{_payment(payment_id)[0]}:authorization:capture"


def authorization_void_key(payment_id: str) -> str:
    """Idempotency key for void_pending on the payment's authorisation hold."""
    return f"{_payment(payment_id)[0]}:authorization:void"


def authorization_hold(payment_id: str, amount: int, currency: str) -> EntryDraft:
    """The card authorisation, as a pending entry (post it with post_pending)."""
    prefix, metadata = _payment(payment_id)
    _positive(amount, "amount")
    return _draft(
        f"{prefix}:authorization",
        f"Authorisation hold for payment {payment_id}",
        [
            Posting(stripe_pending(currency), amount, currency),
            Posting(payment_clearing(payment_id, currency), -amount, currency),
        ],
        metadata,
    )


def _split_credits(split: CaptureSplit, sign: int) -> list[Posting]:
    """Postings for fee, tax and recipients (zero parts left out), credited (sign -1) or debited."""
    currency = split.currency
    lines = [
        (account("platform:fees", currency), split.platform_fee),
        (account("tax:payable", currency), split.tax),
        *((seller_payable(account_id, currency), amount) for account_id, amount in split.recipients),
    ]
    return [Posting(code, sign * amount, currency) for code, amount in lines if amount != 0]


def capture(payment_id: str, split: CaptureSplit, *, after_hold: bool = False) -> EntryDraft:
    """The capture of `split.total`, split into fee, tax and recipients.

    Automatic capture debits stripe:pending. After an authorisation hold was posted with
    post_pending_final, pass `after_hold=True`: the capture then debits the payment's
    clearing account, which the hold's final entry credited.
    """
    prefix, metadata = _payment(payment_id)
    _positive(split.total, "split.total")
    source = payment_clearing(payment_id, split.currency) if after_hold else stripe_pending(split.currency)
    return _draft(
        f"{prefix}:capture",
        f"Capture of payment {payment_id}",
        [Posting(source, split.total, split.currency), *_split_credits(split, -1)],
        metadata,
    )


def processing_fee(payment_id: str, fee_amount: int, currency: str) -> EntryDraft:
    """Stripe's fee for the charge, deducted from our Stripe balance."""
    prefix, metadata = _payment(payment_id)
    _positive(fee_amount, "fee_amount")
    return _draft(
        f"{prefix}:processing_fee",
        f"Stripe processing fee for payment {payment_id}",
        [
            Posting(account("platform:processing_fees", currency), fee_amount, currency),
            Posting(stripe_pending(currency), -fee_amount, currency),
        ],
        metadata,
    )


def transfer_to_connected_account(
    payment_id: str, account_id: str, amount: int, currency: str, transfer_id: str
) -> EntryDraft:
    """A Stripe Connect transfer paying what we owe `account_id` for this payment.

    Keyed by the transfer id, not only the recipient: should Stripe ever hold two transfers to
    one recipient for one payment, both are booked (and the payable's limit refuses the one that
    overpays), never one hidden behind the other's key.
    """
    prefix, metadata = _payment(payment_id)
    _positive(amount, "amount")
    _identifier(transfer_id, "transfer_id")
    return _draft(
        f"{prefix}:transfer:{_identifier(account_id, 'account_id')}:{transfer_id}",
        f"Transfer {transfer_id} to {account_id} for payment {payment_id}",
        [
            Posting(seller_payable(account_id, currency), amount, currency),
            Posting(stripe_pending(currency), -amount, currency),
        ],
        {**metadata, "transfer_id": transfer_id, "account_id": account_id},
    )


def transfer_reversal(payment_id: str, account_id: str, amount: int, currency: str, reversal_id: str) -> EntryDraft:
    """Money pulled back from a connected account (before refunding its share)."""
    prefix, metadata = _payment(payment_id)
    _positive(amount, "amount")
    return _draft(
        f"{prefix}:transfer_reversal:{_identifier(reversal_id, 'reversal_id')}",
        f"Transfer reversal {reversal_id} from {account_id} for payment {payment_id}",
        [
            Posting(stripe_pending(currency), amount, currency),
            Posting(seller_payable(account_id, currency), -amount, currency),
        ],
        {**metadata, "reversal_id": reversal_id, "account_id": account_id},
    )


def settlement(payment_id: str, amount: int, currency: str) -> EntryDraft:
    """Funds of this payment becoming available at Stripe (pending -> available)."""
    prefix, metadata = _payment(payment_id)
    _positive(amount, "amount")
    return _draft(
        f"{prefix}:settlement",
        f"Settlement of payment {payment_id}",
        [
            Posting(stripe_available(currency), amount, currency),
            Posting(stripe_pending(currency), -amount, currency),
        ],
        metadata,
    )


def payout(payout_id: str, amount: int, currency: str) -> EntryDraft:
    """A Stripe payout from our available balance to the platform's bank account."""
    _identifier(payout_id, "payout_id")
    _positive(amount, "amount")
    return _draft(
        f"payout:{payout_id}",
        f"Payout {payout_id} to the platform bank account",
        [
            Posting(account("bank:platform", currency), amount, currency),
            Posting(stripe_available(currency), -amount, currency),
        ],
        {"payout_id": payout_id},
    )


def refund_split(split: CaptureSplit, refund_amount: int) -> CaptureSplit:
    """The parts a refund of `refund_amount` takes back from `split` (proportional, exact)."""
    _positive(refund_amount, "refund_amount")
    if refund_amount > split.total:
        raise InvalidAmount(f"refund {refund_amount} exceeds the {split.total} left to refund", param="refund_amount")
    return scale_split(split, refund_amount)


def refund(payment_id: str, refund_id: str, parts: CaptureSplit) -> EntryDraft:
    """A refund of `parts.total` to the buyer, taken back from the parts that had it.

    `parts` is what each party gives back (the workflow computes it with the exact split rule
    and the refund policy; `refund_split` gives the proportional one). The platform fee and the
    tax are debited at once; the recipients' shares were transferred already, so they become
    `payment:<id>:refund_recoverable` (an asset: what the recipients owe back) until each
    recipient's transfer reversal comes in (`refund_recovery`).
    """
    prefix, metadata = _payment(payment_id)
    _positive(parts.total, "refund_amount")
    currency = parts.currency
    recoverable = sum(amount for _, amount in parts.recipients)
    lines = [
        (account("platform:fees", currency), parts.platform_fee),
        (account("tax:payable", currency), parts.tax),
        (refund_recoverable(payment_id, currency), recoverable),
    ]
    return _draft(
        f"{prefix}:refund:{_identifier(refund_id, 'refund_id')}",
        f"Refund {refund_id} of payment {payment_id}",
        [
            *(Posting(code, amount, currency) for code, amount in lines if amount != 0),
            Posting(stripe_pending(currency), -parts.total, currency),
        ],
        {**metadata, "refund_id": refund_id, "capture_key": capture_key(payment_id)},
    )


def refund_recovery(
    payment_id: str, refund_id: str, account_id: str, amount: int, currency: str, reversal_id: str
) -> EntryDraft:
    """A recipient's share of a refund, back from its connected account by a transfer reversal."""
    prefix, metadata = _payment(payment_id)
    _positive(amount, "amount")
    return _draft(
        f"{prefix}:refund:{_identifier(refund_id, 'refund_id')}:recovery:{_identifier(account_id, 'account_id')}",
        f"Transfer reversal {reversal_id} from {account_id} for refund {refund_id} of payment {payment_id}",
        [
            Posting(stripe_pending(currency), amount, currency),
            Posting(refund_recoverable(payment_id, currency), -amount, currency),
        ],
        {
            **metadata,
            "refund_id": refund_id,
            "reversal_id": _identifier(reversal_id, "reversal_id"),
            "account_id": account_id,
            "capture_key": capture_key(payment_id),
        },
    )


def refund_failed(payment_id: str, refund_id: str, parts: CaptureSplit, recovered: dict[str, int]) -> EntryDraft:
    """Stripe gave a refund's money back to our balance (the refund failed after it was booked).

    Fee and tax are owed again as before the refund; a recipient whose share was already pulled
    back (`recovered`) is owed it again (its payable), what was not yet recovered is no longer
    owed back (the recoverable account returns to what it was).
    """
    prefix, metadata = _payment(payment_id)
    _positive(parts.total, "refund_amount")
    currency = parts.currency
    back = {account_id: recovered.get(account_id, 0) for account_id, _ in parts.recipients}
    for account_id, amount in parts.recipients:
        if not 0 <= back[account_id] <= amount:
            raise InvalidAmount(
                f"recovered {back[account_id]} from {account_id}, its part is {amount}", param="recovered"
            )
    outstanding = sum(amount for _, amount in parts.recipients) - sum(back.values())
    lines = [
        (account("platform:fees", currency), parts.platform_fee),
        (account("tax:payable", currency), parts.tax),
        (refund_recoverable(payment_id, currency), outstanding),
        *((seller_payable(account_id, currency), amount) for account_id, amount in back.items()),
    ]
    return _draft(
        f"{prefix}:refund:{_identifier(refund_id, 'refund_id')}:failed",
        f"Refund {refund_id} of payment {payment_id} failed: the money is back with Stripe",
        [
            Posting(stripe_pending(currency), parts.total, currency),
            *(Posting(code, -amount, currency) for code, amount in lines if amount != 0),
        ],
        {**metadata, "refund_id": refund_id, "capture_key": capture_key(payment_id)},
    )


def _dispute_key(payment_id: str, dispute_id: str, step: str) -> tuple[str, dict[str, str]]:
    prefix, metadata = _payment(payment_id)
    key = f"{prefix}:dispute:{_identifier(dispute_id, 'dispute_id')}:{step}"
    return key, {**metadata, "dispute_id": dispute_id, "capture_key": capture_key(payment_id)}


def capture_key(payment_id: str) -> str:
    """The capture entry's idempotency key: refund and dispute entries name it (`capture_key` in
    their metadata), so a payment's ledger reads as a chain from the capture."""
    return f"{_payment(payment_id)[0]}:capture"


def dispute_opened(payment_id: str, dispute_id: str, amount: int, currency: str, dispute_fee: int) -> EntryDraft:
    """Stripe withdraws the disputed amount and its dispute fee from our balance."""
    key, metadata = _dispute_key(payment_id, dispute_id, "opened")
    _positive(amount, "amount")
    check_amount(dispute_fee, param="dispute_fee", allow_zero=True)
    postings = [
        Posting(account("stripe:disputed", currency), amount, currency),
        Posting(account("platform:disputes", currency), dispute_fee, currency),
        Posting(stripe_pending(currency), -(amount + dispute_fee), currency),
    ]
    return _draft(
        key,
        f"Dispute {dispute_id} opened on payment {payment_id}",
        [posting for posting in postings if posting.amount != 0],
        metadata,
    )


def dispute_won(payment_id: str, dispute_id: str, amount: int, currency: str) -> EntryDraft:
    """Stripe returns the disputed amount (the dispute fee stays an expense)."""
    key, metadata = _dispute_key(payment_id, dispute_id, "won")
    _positive(amount, "amount")
    return _draft(
        key,
        f"Dispute {dispute_id} won on payment {payment_id}",
        [
            Posting(stripe_pending(currency), amount, currency),
            Posting(account("stripe:disputed", currency), -amount, currency),
        ],
        metadata,
    )


def dispute_lost(payment_id: str, dispute_id: str, amount: int, currency: str) -> EntryDraft:
    """The disputed amount is lost for good: the platform bears it as an expense."""
    key, metadata = _dispute_key(payment_id, dispute_id, "lost")
    _positive(amount, "amount")
    return _draft(
        key,
        f"Dispute {dispute_id} lost on payment {payment_id}",
        [
            Posting(account("platform:disputes", currency), amount, currency),
            Posting(account("stripe:disputed", currency), -amount, currency),
        ],
        metadata,
    )


def dispute_recovery(
    payment_id: str, dispute_id: str, account_id: str, amount: int, currency: str, reversal_id: str
) -> EntryDraft:
    """A recipient's share of a lost dispute, back by transfer reversal: the platform's loss shrinks."""
    key, metadata = _dispute_key(payment_id, dispute_id, f"recovery:{_identifier(account_id, 'account_id')}")
    _positive(amount, "amount")
    return _draft(
        key,
        f"Transfer reversal {reversal_id} from {account_id} for lost dispute {dispute_id} of payment {payment_id}",
        [
            Posting(stripe_pending(currency), amount, currency),
            Posting(account("platform:disputes", currency), -amount, currency),
        ],
        {**metadata, "reversal_id": _identifier(reversal_id, "reversal_id"), "account_id": account_id},
    )
