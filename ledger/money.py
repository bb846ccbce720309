"""Money arithmetic: integer minor units, ISO 4217 exponents, exact splits.

Every amount is an `int` in the currency's minor unit (cents for USD, yen for JPY, fils for
KWD) travelling with its currency code. No float ever touches money; parsing goes from the
decimal string straight to an integer.

Splits use the **largest-remainder rule** (Hamilton's method):

1. each part first gets the floor of its exact share, `total * weight // weight_sum`;
2. the minor units still missing (`total - sum(floors)`, always fewer than the number of
   parts) go one each to the parts with the largest fractional remainder
   (`total * weight % weight_sum`);
3. ties go to the lower index (the earlier part), so the result is deterministic.

Hence `sum(parts) == total` for every input, and every part is within one minor unit of its
exact share (it is the floor or the ceiling of it). A part whose exact share is an integer
gets exactly that, so a part never exceeds its weight when `total <= sum(weights)` — which
is what makes proportional refunds safe (`scale_split`).

Marketplace split (`compute_split`): the platform fee is taken on the amount net of tax,
`fee = (total - tax) * fee_bps / 10000` rounded half up (the two-part largest-remainder split
"fee first, rest second"); tax is an explicit amount; the rest goes to recipients — explicit
amounts first, then the remainder by basis points among share recipients (which must sum
to 10000). Example: 9999 with a 1000 bps fee and one seller gives fee 1000, seller 8999.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from ledger.errors import CurrencyMismatch, InvalidAmount, InvalidSplit, UnsupportedCurrency

BASIS_POINTS_TOTAL = 10_000
AMOUNT_MAX = 2**63 - 1  # PostgreSQL bigint; -(2**63) is excluded so every amount can be negated
AMOUNT_TEXT_LENGTH_MAX = 40
RECIPIENTS_MAX = 100
ACCOUNT_ID_PATTERN = re.compile(r"^[A-Za-z0-9_\-]{1,100}$")

# ISO 4217 minor-unit exponents. Most currencies have 2; these are the exceptions plus the
# common 2-decimal ones listed explicitly so an unknown code is an error, not a guess.
_ZERO_DECIMAL = "BIF CLP DJF GNF ISK JPY KMF KRW PYG RWF UGX UYI VND VUV XAF XOF XPF"
_THREE_DECIMAL = "BHD IQD JOD KWD LYD OMR TND"
_FOUR_DECIMAL = "CLF UYW"
_TWO_DECIMAL = (
    "AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BMD BND BOB BRL BSD BTN BWP BYN BZD "
    "CAD CDF CHF CNY COP CRC CUP CVE CZK DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD "
    "GTQ GYD HKD HNL HTG HUF IDR ILS INR IRR JMD KES KGS KHR KPW KYD KZT LAK LBP LKR LRD LSL MAD "
    "MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MYR MZN NAD NGN NIO NOK NPR NZD PAB PEN PGK PHP "
    "PKR PLN QAR RON RSD RUB SAR SBD SCR SDG SEK SGD SHP SLE SOS SRD SSP STN SVC SYP SZL THB TJS "
    "TMT TOP TRY TTD TWD TZS UAH USD UYU UZS VES WST XCD YER ZAR ZMW ZWG"
)
CURRENCY_EXPONENTS: dict[str, int] = {
    **dict.fromkeys(_TWO_DECIMAL.split(), 2),
    **dict.fromkeys(_ZERO_DECIMAL.split(), 0),
    **dict.fromkeys(_THREE_DECIMAL.split(), 3),
    **dict.fromkeys(_FOUR_DECIMAL.split(), 4),
}

_AMOUNT_TEXT = re.compile(r"^(-?)([0-9]+)(?:\.([0-9]+))?$")


def exponent(currency: str) -> int:
    """Number of decimal places of `currency` (USD 2, JPY 0, KWD 3)."""
    try:
        return CURRENCY_EXPONENTS[currency]
    except (KeyError, TypeError):
        raise UnsupportedCurrency(f"currency {currency!r} is not a supported ISO 4217 code", param="currency") from None


def check_amount(amount: int, *, param: str = "amount", allow_zero: bool = False, allow_negative: bool = False) -> int:
    """Return `amount` if it is an int inside the ledger's 64-bit range and of the allowed sign."""
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise InvalidAmount(f"{param} must be an integer number of minor units, got {amount!r}", param=param)
    if not -AMOUNT_MAX <= amount <= AMOUNT_MAX:
        raise InvalidAmount(f"{param} {amount} is outside the signed 64-bit range", param=param)
    if amount == 0 and not allow_zero:
        raise InvalidAmount(f"{param} must not be zero", param=param)
    if amount < 0 and not allow_negative:
        raise InvalidAmount(f"{param} must not be negative, got {amount}", param=param)
    return amount


def parse_amount(text: str, currency: str) -> int:
    """Decimal string to minor units without float: parse_amount("99.99", "USD") == 9999.

    Accepts an optional leading '-', digits, and at most `exponent(currency)` decimals.
    Rejects signs other than '-', spaces, exponents, separators and extra decimals.
    """
    places = exponent(currency)
    if not isinstance(text, str) or len(text) > AMOUNT_TEXT_LENGTH_MAX:
        raise InvalidAmount(f"amount must be a decimal string of at most {AMOUNT_TEXT_LENGTH_MAX} characters")
    match = _AMOUNT_TEXT.match(text)
    if match is None:
        raise InvalidAmount(f"amount {text!r} is not a plain decimal number", param="amount")
    sign, whole, fraction = match.group(1), match.group(2), match.group(3) or ""
    if len(fraction) > places:
        raise InvalidAmount(
            f"amount {text!r} has {len(fraction)} decimals but {currency} has {places}",
            param="amount",
        )
    minor = int(whole) * 10**places + int(fraction.ljust(places, "0") or "0")
    return check_amount(-minor if sign else minor, allow_zero=True, allow_negative=True)


def format_amount(amount_minor: int, currency: str) -> str:
    """Minor units to a decimal string, the inverse of parse_amount: (9999, "USD") -> "99.99"."""
    places = exponent(currency)
    check_amount(amount_minor, param="amount_minor", allow_zero=True, allow_negative=True)
    sign = "-" if amount_minor < 0 else ""
    whole, fraction = divmod(abs(amount_minor), 10**places)
    return f"{sign}{whole}.{fraction:0{places}d}" if places else f"{sign}{whole}"


def split_by_weights(total: int, weights: Sequence[int]) -> list[int]:
    """Split `total` (>= 0) proportionally to non-negative integer `weights` by largest remainder."""
    check_amount(total, param="total", allow_zero=True)
    if not weights:
        raise InvalidSplit("a split needs at least one part", param="shares")
    for weight in weights:
        if isinstance(weight, bool) or not isinstance(weight, int) or weight < 0:
            raise InvalidSplit(f"split weights must be non-negative integers, got {weight!r}", param="shares")
    weight_sum = sum(weights)
    if weight_sum == 0:
        raise InvalidSplit("split weights must not all be zero", param="shares")
    parts = [total * weight // weight_sum for weight in weights]
    missing = total - sum(parts)
    # Fewer than len(weights) units are missing; give them to the largest remainders, earlier first.
    by_remainder = sorted(range(len(weights)), key=lambda index: (-(total * weights[index] % weight_sum), index))
    for index in by_remainder[:missing]:
        parts[index] += 1
    assert sum(parts) == total, (total, weights, parts)
    return parts


def split_by_basis_points(total: int, shares_bps: Sequence[int]) -> list[int]:
    """Split `total` by shares in basis points that sum to exactly 10000 (largest remainder).

    sum(result) == total; each part is the floor or ceiling of total * share / 10000; ties
    for the leftover units go to the lower index.
    """
    if sum(shares_bps) != BASIS_POINTS_TOTAL:
        raise InvalidSplit(f"shares must sum to {BASIS_POINTS_TOTAL} basis points, got {sum(shares_bps)}")
    return split_by_weights(total, shares_bps)


@dataclass(frozen=True)
class SplitRecipient:
    """Who gets the rest after fee and tax: exactly one of `share_bps` or `amount`."""

    account_id: str
    share_bps: int | None = None
    amount: int | None = None


@dataclass(frozen=True)
class CaptureSplit:
    """Where a captured amount goes. Invariant: total == platform_fee + tax + sum(recipients)."""

    total: int
    currency: str
    platform_fee: int
    tax: int
    recipients: tuple[tuple[str, int], ...]

    def __post_init__(self) -> None:
        exponent(self.currency)
        check_amount(self.total, param="total", allow_zero=True)
        check_amount(self.platform_fee, param="platform_fee", allow_zero=True)
        check_amount(self.tax, param="tax", allow_zero=True)
        seen: set[str] = set()
        for account_id, amount in self.recipients:
            if not isinstance(account_id, str) or not ACCOUNT_ID_PATTERN.match(account_id):
                raise InvalidSplit(f"recipient account id {account_id!r} is malformed", param="recipients")
            if account_id in seen:
                raise InvalidSplit(f"recipient {account_id} appears twice", param="recipients")
            seen.add(account_id)
            check_amount(amount, param="recipients", allow_zero=True)
        parts_sum = self.platform_fee + self.tax + sum(amount for _, amount in self.recipients)
        if parts_sum != self.total:
            raise InvalidSplit(f"split parts sum to {parts_sum}, not the total {self.total}", param="total")

    @property
    def parts(self) -> list[int]:
        """Fee, tax, then each recipient's amount, in order (sums to total)."""
        return [self.platform_fee, self.tax, *(amount for _, amount in self.recipients)]


def _check_recipients(recipients: Sequence[SplitRecipient]) -> None:
    if not recipients:
        raise InvalidSplit("a split needs at least one recipient", param="recipients")
    if len(recipients) > RECIPIENTS_MAX:
        raise InvalidSplit(f"at most {RECIPIENTS_MAX} recipients", param="recipients")
    for recipient in recipients:
        if (recipient.share_bps is None) == (recipient.amount is None):
            raise InvalidSplit(
                f"recipient {recipient.account_id} needs exactly one of share_bps or amount", param="recipients"
            )
        if recipient.amount is not None:
            check_amount(recipient.amount, param="recipients.amount", allow_zero=True)
        if recipient.share_bps is not None and (
            isinstance(recipient.share_bps, bool)
            or not isinstance(recipient.share_bps, int)
            or not 0 <= recipient.share_bps <= BASIS_POINTS_TOTAL
        ):
            raise InvalidSplit(f"share_bps must be 0..{BASIS_POINTS_TOTAL}", param="recipients.share_bps")


def compute_split(
    total: int,
    currency: str,
    *,
    platform_fee_bps: int,
    tax_amount: int,
    recipients: Sequence[SplitRecipient],
) -> CaptureSplit:
    """Split a captured `total` into platform fee, tax and recipients, exactly.

    fee = (total - tax) * platform_fee_bps / 10000, rounded half up; recipients with an
    explicit `amount` get it; the rest is shared by basis points among share recipients
    (their shares must sum to 10000). Without share recipients the amounts must add up to
    exactly the rest.
    """
    exponent(currency)
    check_amount(total, param="total")
    check_amount(tax_amount, param="tax_amount", allow_zero=True)
    if isinstance(platform_fee_bps, bool) or not isinstance(platform_fee_bps, int):
        raise InvalidSplit("platform_fee_bps must be an integer", param="platform_fee_bps")
    if not 0 <= platform_fee_bps <= BASIS_POINTS_TOTAL:
        raise InvalidSplit(f"platform_fee_bps must be 0..{BASIS_POINTS_TOTAL}", param="platform_fee_bps")
    if tax_amount > total:
        raise InvalidSplit(f"tax {tax_amount} exceeds the total {total}", param="tax_amount")
    _check_recipients(recipients)
    net_of_tax = total - tax_amount
    fee, _ = split_by_weights(net_of_tax, [platform_fee_bps, BASIS_POINTS_TOTAL - platform_fee_bps])
    rest = net_of_tax - fee
    fixed_sum = sum(recipient.amount for recipient in recipients if recipient.amount is not None)
    sharing = [recipient for recipient in recipients if recipient.share_bps is not None]
    if fixed_sum > rest:
        raise InvalidSplit(f"recipient amounts {fixed_sum} exceed what remains after fee and tax ({rest})")
    if not sharing and fixed_sum != rest:
        raise InvalidSplit(f"recipient amounts sum to {fixed_sum} but {rest} remains after fee and tax")
    shared = (
        iter(split_by_basis_points(rest - fixed_sum, [recipient.share_bps or 0 for recipient in sharing]))
        if sharing
        else iter(())
    )
    parts = tuple(
        (recipient.account_id, recipient.amount if recipient.amount is not None else next(shared))
        for recipient in recipients
    )
    return CaptureSplit(total=total, currency=currency, platform_fee=fee, tax=tax_amount, recipients=parts)


def scale_split(split: CaptureSplit, new_total: int) -> CaptureSplit:
    """The share of `new_total` (0..split.total) each part of `split` gets, by largest remainder.

    Used for partial captures and proportional refunds. No part exceeds its original amount.
    For a second partial refund, scale the split that *remains* (`subtract_split`), not the
    original, so the refunds together never take more from a part than it had.
    """
    check_amount(new_total, param="new_total", allow_zero=True)
    if new_total > split.total:
        raise InvalidAmount(f"cannot scale a split of {split.total} up to {new_total}", param="new_total")
    if new_total == split.total:
        return split
    if split.total == 0:
        raise InvalidSplit("cannot scale an empty split", param="split")
    fee, tax, *amounts = split_by_weights(new_total, split.parts)
    recipients = tuple((account_id, amount) for (account_id, _), amount in zip(split.recipients, amounts, strict=True))
    return CaptureSplit(total=new_total, currency=split.currency, platform_fee=fee, tax=tax, recipients=recipients)


def subtract_split(split: CaptureSplit, taken: CaptureSplit) -> CaptureSplit:
    """What remains of `split` after `taken` (e.g. a refund's parts) went back, part by part."""
    if taken.currency != split.currency:
        raise CurrencyMismatch(f"cannot subtract a {taken.currency} split from a {split.currency} split")
    if [account_id for account_id, _ in taken.recipients] != [account_id for account_id, _ in split.recipients]:
        raise InvalidSplit("the two splits have different recipients", param="recipients")
    remaining = [before - after for before, after in zip(split.parts, taken.parts, strict=True)]
    if min(remaining) < 0:
        raise InvalidSplit("a part would become negative", param="split")
    fee, tax, *amounts = remaining
    recipients = tuple((account_id, amount) for (account_id, _), amount in zip(split.recipients, amounts, strict=True))
    return CaptureSplit(
        total=split.total - taken.total, currency=split.currency, platform_fee=fee, tax=tax, recipients=recipients
    )
