"""Money arithmetic: parsing, formatting and exact splits (pure; property tests with Hypothesis)."""

from __future__ import annotations

import itertools
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.errors import CurrencyMismatch, InvalidAmount, InvalidSplit, LedgerError, UnsupportedCurrency
from ledger.money import (
    AMOUNT_MAX,
    CURRENCY_EXPONENTS,
    CaptureSplit,
    SplitRecipient,
    compute_split,
    exponent,
    format_amount,
    parse_amount,
    scale_split,
    split_by_basis_points,
    split_by_weights,
    subtract_split,
)

PROPERTY_EXAMPLES = 300


def basis_point_shares(max_parts: int = 12) -> st.SearchStrategy[list[int]]:
    """Lists of non-negative shares summing to exactly 10000."""

    @st.composite
    def build(draw: st.DrawFn) -> list[int]:
        cuts = sorted(draw(st.lists(st.integers(0, 10_000), min_size=0, max_size=max_parts - 1)))
        bounds = [0, *cuts, 10_000]
        return [upper - lower for lower, upper in itertools.pairwise(bounds)]

    return build()


@pytest.mark.parametrize(
    ("currency", "places"), [("USD", 2), ("EUR", 2), ("JPY", 0), ("KRW", 0), ("KWD", 3), ("BHD", 3), ("CLF", 4)]
)
def test_exponents_follow_iso_4217(currency: str, places: int) -> None:
    assert exponent(currency) == places


def test_unknown_currency_is_an_error_with_a_stable_code() -> None:
    with pytest.raises(UnsupportedCurrency) as raised:
        exponent("XXX")
    assert raised.value.code == "unsupported_currency"
    assert isinstance(raised.value, LedgerError)
    with pytest.raises(UnsupportedCurrency):
        exponent("usd")


@pytest.mark.parametrize(
    ("text", "currency", "minor"),
    [
        ("99.99", "USD", 9999),
        ("100", "USD", 10000),
        ("0.5", "USD", 50),
        ("-0.05", "EUR", -5),
        ("1000", "JPY", 1000),
        ("1.234", "KWD", 1234),
        ("92233720368547758.07", "USD", AMOUNT_MAX),
    ],
)
def test_parse_amount_converts_exactly(text: str, currency: str, minor: int) -> None:
    assert parse_amount(text, currency) == minor


@pytest.mark.parametrize(
    ("text", "currency"),
    [
        ("1.999", "USD"),  # more decimals than USD has
        ("100.5", "JPY"),  # JPY has none
        ("1e3", "USD"),
        ("+1", "USD"),
        (" 1", "USD"),
        ("1,000.00", "USD"),
        ("", "USD"),
        (".5", "USD"),
        ("NaN", "USD"),
        ("92233720368547758.08", "USD"),  # one past the 64-bit range
    ],
)
def test_parse_amount_rejects_what_is_not_an_exact_amount(text: str, currency: str) -> None:
    with pytest.raises(InvalidAmount):
        parse_amount(text, currency)


@given(st.integers(-AMOUNT_MAX, AMOUNT_MAX), st.sampled_from(sorted(CURRENCY_EXPONENTS)))
def test_format_then_parse_is_the_identity(amount: int, currency: str) -> None:
    assert parse_amount(format_amount(amount, currency), currency) == amount


def test_format_amount_examples() -> None:
    assert format_amount(9999, "USD") == "99.99"
    assert format_amount(-5, "USD") == "-0.05"
    assert format_amount(500, "JPY") == "500"
    assert format_amount(1234, "KWD") == "1.234"


@settings(max_examples=PROPERTY_EXAMPLES)
@given(total=st.integers(0, 10**15), shares=basis_point_shares())
def test_split_by_basis_points_is_exact_fair_and_deterministic(total: int, shares: list[int]) -> None:
    parts = split_by_basis_points(total, shares)
    assert sum(parts) == total
    for part, share in zip(parts, shares, strict=True):
        exact = Fraction(total * share, 10_000)
        assert abs(part - exact) < 1, (part, exact)
    assert split_by_basis_points(total, shares) == parts


@settings(max_examples=PROPERTY_EXAMPLES)
@given(total=st.integers(0, 10**12), weights=st.lists(st.integers(0, 10**9), min_size=1, max_size=10))
def test_split_by_weights_never_gives_a_part_more_than_its_weight_when_shrinking(
    total: int, weights: list[int]
) -> None:
    if sum(weights) == 0:
        return
    total = total % (sum(weights) + 1)
    parts = split_by_weights(total, weights)
    assert sum(parts) == total
    assert all(0 <= part <= weight for part, weight in zip(parts, weights, strict=True))


def test_ties_go_to_the_lower_index() -> None:
    assert split_by_basis_points(1, [5000, 5000]) == [1, 0]
    assert split_by_basis_points(2, [3334, 3333, 3333]) == [1, 1, 0]


def test_4999_split_three_ways_sums_to_4999() -> None:
    assert split_by_basis_points(4999, [3334, 3333, 3333]) == [1667, 1666, 1666]


@pytest.mark.parametrize("shares", [[5000, 4999], [5000, 5001], [], [10_001, -1]])
def test_split_rejects_shares_not_summing_to_10000(shares: list[int]) -> None:
    with pytest.raises(InvalidSplit):
        split_by_basis_points(100, shares)


def test_9999_with_a_10_percent_fee_gives_1000_and_8999() -> None:
    split = compute_split(
        9999, "USD", platform_fee_bps=1000, tax_amount=0, recipients=[SplitRecipient("acct_1", share_bps=10_000)]
    )
    assert (split.platform_fee, split.tax, split.recipients) == (1000, 0, (("acct_1", 8999),))


def test_fee_is_taken_net_of_tax_and_amounts_come_before_shares() -> None:
    split = compute_split(
        11_000,
        "USD",
        platform_fee_bps=1000,
        tax_amount=1000,
        recipients=[
            SplitRecipient("driver_1", amount=500),
            SplitRecipient("seller_a", share_bps=5000),
            SplitRecipient("seller_b", share_bps=5000),
        ],
    )
    assert split.platform_fee == 1000  # 10% of 10000, not of 11000
    assert split.recipients == (("driver_1", 500), ("seller_a", 4250), ("seller_b", 4250))


@pytest.mark.parametrize(
    ("total", "fee_bps", "tax", "recipients"),
    [
        (0, 1000, 0, [SplitRecipient("a", share_bps=10_000)]),
        (-5, 1000, 0, [SplitRecipient("a", share_bps=10_000)]),
        (100, 10_001, 0, [SplitRecipient("a", share_bps=10_000)]),
        (100, 1000, 101, [SplitRecipient("a", share_bps=10_000)]),
        (100, 1000, -1, [SplitRecipient("a", share_bps=10_000)]),
        (100, 1000, 0, []),
        (100, 1000, 0, [SplitRecipient("a", share_bps=5000)]),
        (100, 1000, 0, [SplitRecipient("a", amount=80)]),  # 90 remains, 80 given: a cent would vanish
        (100, 1000, 0, [SplitRecipient("a", amount=91)]),
        (100, 1000, 0, [SplitRecipient("a", share_bps=5000, amount=1)]),
        (100, 1000, 0, [SplitRecipient("a", share_bps=5000), SplitRecipient("a", share_bps=5000)]),
        (100, 1000, 0, [SplitRecipient("bad id!", share_bps=10_000)]),
        (2**63, 1000, 0, [SplitRecipient("a", share_bps=10_000)]),
    ],
)
def test_compute_split_rejects_bad_input_clearly(
    total: int, fee_bps: int, tax: int, recipients: list[SplitRecipient]
) -> None:
    with pytest.raises(LedgerError) as raised:
        compute_split(total, "USD", platform_fee_bps=fee_bps, tax_amount=tax, recipients=recipients)
    assert raised.value.code in {"invalid_amount", "invalid_split"}


def test_capture_split_refuses_parts_that_do_not_add_up() -> None:
    with pytest.raises(InvalidSplit):
        CaptureSplit(total=100, currency="USD", platform_fee=10, tax=0, recipients=(("a", 89),))


@st.composite
def capture_splits_with_fee(draw: st.DrawFn) -> tuple[CaptureSplit, int]:
    total = draw(st.integers(1, 10**12))
    tax = draw(st.integers(0, total))
    shares = draw(basis_point_shares(max_parts=5))
    fee_bps = draw(st.integers(0, 10_000))
    split = compute_split(
        total,
        draw(st.sampled_from(["USD", "JPY", "KWD"])),
        platform_fee_bps=fee_bps,
        tax_amount=tax,
        recipients=[SplitRecipient(f"acct_{index}", share_bps=share) for index, share in enumerate(shares)],
    )
    return split, fee_bps


def capture_splits() -> st.SearchStrategy[CaptureSplit]:
    return capture_splits_with_fee().map(lambda pair: pair[0])


@settings(max_examples=PROPERTY_EXAMPLES)
@given(split_and_fee=capture_splits_with_fee())
def test_compute_split_accounts_for_every_minor_unit_and_rounds_the_fee_half_up(
    split_and_fee: tuple[CaptureSplit, int],
) -> None:
    split, fee_bps = split_and_fee
    assert sum(split.parts) == split.total
    exact_fee = Fraction((split.total - split.tax) * fee_bps, 10_000)
    assert split.platform_fee == int(exact_fee + Fraction(1, 2))  # round half up
    assert all(amount >= 0 for amount in split.parts)


@settings(max_examples=PROPERTY_EXAMPLES)
@given(split=capture_splits(), data=st.data())
def test_partial_refunds_of_the_remaining_split_never_overdraw_a_part(split: CaptureSplit, data: st.DataObject) -> None:
    remaining = split
    for _ in range(data.draw(st.integers(1, 4))):
        if remaining.total == 0:
            break
        refund_amount = data.draw(st.integers(1, remaining.total))
        taken = scale_split(remaining, refund_amount)
        assert taken.total == refund_amount
        assert all(0 <= part <= before for part, before in zip(taken.parts, remaining.parts, strict=True))
        remaining = subtract_split(remaining, taken)
    assert sum(remaining.parts) == remaining.total


def test_scale_split_examples() -> None:
    split = CaptureSplit(total=9999, currency="USD", platform_fee=1000, tax=0, recipients=(("acct_1", 8999),))
    refund = scale_split(split, 3333)
    assert (refund.platform_fee, refund.recipients) == (333, (("acct_1", 3000),))
    assert scale_split(split, 9999) == split
    with pytest.raises(InvalidAmount):
        scale_split(split, 10_000)


def test_subtract_split_refuses_other_currencies() -> None:
    usd = CaptureSplit(total=10, currency="USD", platform_fee=1, tax=0, recipients=(("a", 9),))
    eur = CaptureSplit(total=10, currency="EUR", platform_fee=1, tax=0, recipients=(("a", 9),))
    with pytest.raises(CurrencyMismatch):
        subtract_split(usd, eur)
