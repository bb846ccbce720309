"""Checks of a payment request that need configuration or several fields at once.

Per-field limits (lengths, charsets, bounds) are in `api.models`; here: the largest amount
and the supported currencies (settings), distinct recipients, and the exact split computed by
`ledger.money.compute_split` -- the same function the workflow uses, so a request the API
accepts is never refused later as an invalid split (shares sum to 100 %, fee + tax ≤ amount,
fixed amounts within what remains).
"""

from __future__ import annotations

from api.errors import invalid_request
from api.models import PaymentCreate
from ledger.errors import LedgerError
from ledger.money import CURRENCY_EXPONENTS, SplitRecipient, compute_split
from penny.settings import Settings

# The ledger's parameter names → the API's.
_LEDGER_PARAMS = {
    "recipients": "splits",
    "recipients.amount": "splits",
    "recipients.share_bps": "splits",
    "tax_amount": "tax",
    "platform_fee_bps": "platform_fee",
    "total": "amount",
}


def check_payment_create(body: PaymentCreate, settings: Settings) -> None:
    if body.amount > settings.max_amount_minor:
        raise invalid_request(
            "amount_too_large", f"Amount must be at most {settings.max_amount_minor} (minor units).", "amount"
        )
    currency = body.currency.upper()
    if currency not in settings.currencies or currency not in CURRENCY_EXPONENTS:
        raise invalid_request(
            "currency_not_supported",
            f"Currency must be one of {', '.join(sorted(settings.currencies & CURRENCY_EXPONENTS.keys()))}.",
            "currency",
        )
    accounts = [split.account_id for split in body.splits]
    if len(set(accounts)) != len(accounts):
        raise invalid_request("parameter_invalid", "Each split recipient (account_id) may appear only once.", "splits")
    shares_bps = sum(split.share_bps or 0 for split in body.splits)
    if shares_bps > 10_000:
        raise invalid_request("parameter_invalid", "Split shares add up to more than 10000 basis points.", "splits")
    try:
        compute_split(
            body.amount,
            currency,
            platform_fee_bps=body.platform_fee,
            tax_amount=body.tax,
            recipients=[
                SplitRecipient(account_id=split.account_id, share_bps=split.share_bps, amount=split.amount)
                for split in body.splits
            ],
        )
    except LedgerError as error:
        param = _LEDGER_PARAMS.get(error.param or "", error.param or "splits")
        raise invalid_request(
            "parameter_invalid", f"Invalid {param}: {getattr(error, 'message', str(error))}.", param
        ) from None
