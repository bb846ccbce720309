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
    "recipients": "recipients",
    "recipients.amount": "recipients",
    "recipients.share_bps": "recipients",
    "tax_amount": "tax_amount",
    "platform_fee_bps": "application_fee_bps",
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
    accounts = [recipient.account_id for recipient in body.recipients]
    if len(set(accounts)) != len(accounts):
        raise invalid_request("parameter_invalid", "Each recipient (account_id) may appear only once.", "recipients")
    shares_bps = sum(recipient.share_bps or 0 for recipient in body.recipients)
    if shares_bps > 10_000:
        raise invalid_request(
            "parameter_invalid", "Recipients' share_bps add up to more than 10000 basis points (100 %).", "recipients"
        )
    if body.tax_amount > body.amount:
        raise invalid_request(
            "parameter_invalid",
            "tax_amount is more than amount; both are in minor units and the tax is included in amount.",
            "tax_amount",
        )
    try:
        compute_split(
            body.amount,
            currency,
            platform_fee_bps=body.application_fee_bps,
            tax_amount=body.tax_amount,
            recipients=[
                SplitRecipient(account_id=recipient.account_id, share_bps=recipient.share_bps, amount=recipient.amount)
                for recipient in body.recipients
            ],
        )
    except LedgerError as error:
        param = _LEDGER_PARAMS.get(error.param or "", error.param or "recipients")
        raise invalid_request(
            "parameter_invalid", f"Invalid {param}: {getattr(error, 'message', str(error))}.", param
        ) from None
