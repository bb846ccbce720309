"""Chart of accounts: every constructor is a pure function from a domain event to a balanced entry."""

from __future__ import annotations

from collections import defaultdict

import pytest

from ledger import chart
from ledger.errors import InvalidAccount, InvalidAmount, LedgerError
from ledger.models import EntryDraft
from ledger.money import CaptureSplit, SplitRecipient, compute_split, subtract_split

PAYMENT = "pay_1"
SPLIT_9999 = compute_split(
    9999, "USD", platform_fee_bps=1000, tax_amount=0, recipients=[SplitRecipient("acct_1", share_bps=10_000)]
)


def lines(draft: EntryDraft) -> dict[str, int]:
    return {posting.account: posting.amount for posting in draft.postings}


def every_constructor() -> list[EntryDraft]:
    taxed = compute_split(
        11_000,
        "EUR",
        platform_fee_bps=1500,
        tax_amount=1000,
        recipients=[SplitRecipient("acct_1", share_bps=6000), SplitRecipient("acct_2", share_bps=4000)],
    )
    return [
        chart.authorization_hold(PAYMENT, 9999, "USD"),
        chart.capture(PAYMENT, SPLIT_9999),
        chart.capture(PAYMENT, SPLIT_9999, after_hold=True),
        chart.capture("pay_2", taxed),
        chart.processing_fee(PAYMENT, 320, "USD"),
        chart.transfer_to_connected_account(PAYMENT, "acct_1", 8999, "USD", "tr_1"),
        chart.transfer_reversal(PAYMENT, "acct_1", 3000, "USD", "trr_1"),
        chart.settlement(PAYMENT, 680, "USD"),
        chart.payout("po_1", 680, "USD"),
        chart.refund(PAYMENT, "rf_1", chart.refund_split(SPLIT_9999, 3333)),
        chart.refund("pay_2", "rf_1", taxed),
        chart.refund_recovery(PAYMENT, "rf_1", "acct_1", 3000, "USD", "trr_1"),
        chart.refund_failed(PAYMENT, "rf_1", chart.refund_split(SPLIT_9999, 3333), {"acct_1": 1000}),
        chart.refund_failed("pay_2", "rf_1", taxed, {}),
        chart.dispute_opened(PAYMENT, "dp_1", 9999, "USD", 1500),
        chart.dispute_won(PAYMENT, "dp_1", 9999, "USD"),
        chart.dispute_lost(PAYMENT, "dp_1", 9999, "USD"),
    ]


@pytest.mark.parametrize("draft", every_constructor(), ids=lambda draft: draft.idempotency_key)
def test_every_entry_balances_and_opens_only_chart_accounts(draft: EntryDraft) -> None:
    totals: dict[str, int] = defaultdict(int)
    for posting in draft.postings:
        assert posting.amount != 0
        totals[posting.currency] += posting.amount
    assert set(totals.values()) == {0}
    assert len(draft.postings) >= 2
    specs = chart.accounts_for(draft)
    assert {spec.code for spec in specs} == {posting.account for posting in draft.postings}


def test_idempotency_keys_are_distinct_per_step_and_carry_the_payment() -> None:
    drafts = every_constructor()
    keys = [draft.idempotency_key for draft in drafts]
    # The two capture variants of one payment share the key on purpose: a payment captures once.
    assert len(set(keys)) == len(keys) - 1
    for draft in drafts:
        if draft.idempotency_key.startswith("payment:"):
            assert draft.metadata["payment_id"] == draft.idempotency_key.split(":")[1]


def test_capture_of_9999_with_10_percent_fee_matches_the_design_example() -> None:
    assert lines(chart.capture(PAYMENT, SPLIT_9999)) == {
        "stripe:pending:usd": 9999,
        "platform:fees:usd": -1000,
        "seller:acct_1:payable:usd": -8999,
    }


def test_capture_after_a_hold_takes_the_money_from_the_payment_clearing_account() -> None:
    hold = chart.authorization_hold(PAYMENT, 9999, "USD")
    assert lines(hold) == {"stripe:pending:usd": 9999, "payment:pay_1:clearing:usd": -9999}
    assert lines(chart.capture(PAYMENT, SPLIT_9999, after_hold=True)) == {
        "payment:pay_1:clearing:usd": 9999,
        "platform:fees:usd": -1000,
        "seller:acct_1:payable:usd": -8999,
    }


def test_refund_takes_the_split_back_in_proportion_and_the_recipients_share_is_recoverable() -> None:
    assert lines(chart.refund(PAYMENT, "rf_1", chart.refund_split(SPLIT_9999, 3333))) == {
        "platform:fees:usd": 333,
        "payment:pay_1:refund_recoverable:usd": 3000,
        "stripe:pending:usd": -3333,
    }
    assert lines(chart.refund_recovery(PAYMENT, "rf_1", "acct_1", 3000, "USD", "trr_1")) == {
        "stripe:pending:usd": 3000,
        "payment:pay_1:refund_recoverable:usd": -3000,
    }


def test_refund_failed_gives_everything_back_and_the_recovered_share_is_owed_again() -> None:
    parts = chart.refund_split(SPLIT_9999, 3333)
    assert lines(chart.refund_failed(PAYMENT, "rf_1", parts, {"acct_1": 3000})) == {
        "stripe:pending:usd": 3333,
        "platform:fees:usd": -333,
        "seller:acct_1:payable:usd": -3000,
    }
    assert lines(chart.refund_failed(PAYMENT, "rf_1", parts, {})) == {
        "stripe:pending:usd": 3333,
        "platform:fees:usd": -333,
        "payment:pay_1:refund_recoverable:usd": -3000,
    }
    with pytest.raises(InvalidAmount):
        chart.refund_failed(PAYMENT, "rf_1", parts, {"acct_1": 3001})


def test_refunds_of_the_remaining_split_add_up_to_the_capture() -> None:
    remaining = SPLIT_9999
    refunded: dict[str, int] = defaultdict(int)
    for number, amount in enumerate([1, 1, 4997, 5000]):
        parts = chart.refund_split(remaining, amount)
        for account, posted in lines(chart.refund(PAYMENT, f"rf_{number}", parts)).items():
            refunded[account] += posted
        remaining = subtract_split(remaining, parts)
    assert dict(refunded) == {
        "platform:fees:usd": 1000,
        "payment:pay_1:refund_recoverable:usd": 8999,
        "stripe:pending:usd": -9999,
    }
    assert remaining.total == 0


def test_zero_parts_leave_no_posting() -> None:
    split = CaptureSplit(total=100, currency="USD", platform_fee=0, tax=0, recipients=(("acct_1", 100),))
    assert lines(chart.capture(PAYMENT, split)) == {"stripe:pending:usd": 100, "seller:acct_1:payable:usd": -100}
    assert len(chart.dispute_opened(PAYMENT, "dp_1", 100, "USD", 0).postings) == 2


def test_dispute_opened_withdraws_amount_and_fee() -> None:
    assert lines(chart.dispute_opened(PAYMENT, "dp_1", 9999, "USD", 1500)) == {
        "stripe:disputed:usd": 9999,
        "platform:disputes:usd": 1500,
        "stripe:pending:usd": -11_499,
    }


@pytest.mark.parametrize(
    ("code", "account_type", "limited"),
    [
        ("stripe:pending:usd", "asset", False),
        ("bank:platform:usd", "asset", False),
        ("seller:acct_9:payable:usd", "liability", True),
        ("payment:pay_1:clearing:usd", "liability", True),
        ("payment:pay_1:refund_recoverable:usd", "asset", True),
        ("tax:payable:usd", "liability", False),
        ("platform:fees:usd", "revenue", False),
        ("platform:processing_fees:usd", "expense", False),
        ("platform:disputes:usd", "expense", False),
        ("platform:equity:usd", "equity", False),
    ],
)
def test_account_spec_follows_the_code_pattern(code: str, account_type: str, limited: bool) -> None:
    spec = chart.account_spec(code, "USD")
    assert (spec.type, spec.must_not_go_negative, spec.currency) == (account_type, limited, "USD")


@pytest.mark.parametrize(
    ("code", "currency"),
    [("stripe:pending:usd", "EUR"), ("stripe:pending", "USD"), ("seller::payable:usd", "USD"), ("x:y:usd", "USD")],
)
def test_account_spec_refuses_codes_outside_the_chart(code: str, currency: str) -> None:
    with pytest.raises(InvalidAccount):
        chart.account_spec(code, currency)


@pytest.mark.parametrize(
    "make",
    [
        lambda: chart.authorization_hold(PAYMENT, 0, "USD"),
        lambda: chart.processing_fee(PAYMENT, -1, "USD"),
        lambda: chart.settlement(PAYMENT, 2**63, "USD"),
        lambda: chart.payout("po 1", 10, "USD"),
        lambda: chart.capture("pay:1", SPLIT_9999),
        lambda: chart.refund_split(SPLIT_9999, 10_000),
        lambda: chart.refund_recovery(PAYMENT, "rf_1", "acct_1", 0, "USD", "trr_1"),
        lambda: chart.transfer_to_connected_account(PAYMENT, "acct_1", 10, "XXX", "tr_1"),
    ],
)
def test_constructors_refuse_bad_input(make) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LedgerError):
        make()


def test_refund_beyond_what_is_left_is_invalid_amount() -> None:
    with pytest.raises(InvalidAmount):
        chart.refund_split(SPLIT_9999, 10_000)
