"""The ledger on a real PostgreSQL: posting, idempotency, two-phase holds, reversals, limits,
reads, verify, and what the database itself refuses."""

from __future__ import annotations

import asyncio
import itertools
import random
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import chart
from ledger import ledger as books
from ledger.errors import (
    AccountConflict,
    AmountExceedsPending,
    CurrencyMismatch,
    EntryNotPending,
    IdempotencyConflict,
    InvalidAccount,
    InvalidAmount,
    InvalidEntry,
    KeyTooLong,
    LedgerError,
    LimitExceeded,
    NotReversible,
    UnbalancedEntry,
    UnknownAccount,
    UnknownEntry,
    UnsupportedCurrency,
)
from ledger.models import AccountSpec, EntryDraft, Posting
from ledger.money import SplitRecipient, compute_split

_numbers = itertools.count(1)


def unique(prefix: str) -> str:
    return f"{prefix}_{next(_numbers)}_{random.randrange(10**9)}"


def draft(key: str, *postings: tuple[str, int], currency: str = "USD", **extra: object) -> EntryDraft:
    return EntryDraft(
        idempotency_key=key,
        description="test entry",
        postings=tuple(Posting(account, amount, currency) for account, amount in postings),
        **extra,  # type: ignore[arg-type]
    )


async def open_for(engine: AsyncEngine, entry: EntryDraft) -> None:
    async with engine.begin() as connection:
        await books.open_accounts(connection, chart.accounts_for(entry))


async def entry_count(engine: AsyncEngine) -> int:
    async with engine.connect() as connection:
        return int((await connection.execute(text("SELECT count(*) FROM ledger.entries"))).scalar_one())


async def funded_seller(engine: AsyncEngine, amount: int = 10_000) -> str:
    """A seller payable with `amount` owed to it (credited by a capture)."""
    seller = unique("acct")
    split = compute_split(
        amount, "USD", platform_fee_bps=0, tax_amount=0, recipients=[SplitRecipient(seller, share_bps=10_000)]
    )
    capture = chart.capture(unique("pay"), split)
    await open_for(engine, capture)
    await books.Ledger(engine).post(capture)
    return chart.seller_payable(seller, "USD")


async def test_capture_moves_balances_in_their_normal_direction(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    payment = unique("pay")
    seller = unique("acct")
    split = compute_split(
        9999, "USD", platform_fee_bps=1000, tax_amount=0, recipients=[SplitRecipient(seller, share_bps=10_000)]
    )
    capture = chart.capture(payment, split)
    await open_for(engine, capture)
    seller_code = chart.seller_payable(seller, "USD")
    fees_before = await ledger.balance("platform:fees:usd")

    entry = await ledger.post(capture)

    assert entry.created and entry.status == "posted"
    seller_balance = await ledger.balance(seller_code)
    assert (seller_balance.posted, seller_balance.pending, seller_balance.type) == (8999, 0, "liability")
    assert seller_balance.credits_posted == 8999 and seller_balance.version == 1
    assert (await ledger.balance("platform:fees:usd")).posted - fees_before.posted == 1000
    assert [found.id for found in await ledger.entries_by_metadata("payment_id", payment)] == [entry.id]
    assert await ledger.verify() == []


async def test_same_key_and_same_postings_returns_the_original_entry(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    seller = await funded_seller(engine)
    key = unique("key")
    first = await ledger.post(draft(key, ("stripe:pending:usd", 500), (seller, -500)))
    # A retry may list the postings in another order and describe them differently.
    replay = EntryDraft(key, "retried", (Posting(seller, -500, "USD"), Posting("stripe:pending:usd", 500, "USD")))

    second = await ledger.post(replay)

    assert (second.id, second.created, first.created) == (first.id, False, True)
    assert (await ledger.balance(seller)).posted == 10_500


async def test_same_key_with_different_postings_is_a_conflict_and_writes_nothing(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    seller = await funded_seller(engine)
    key = unique("key")
    await ledger.post(draft(key, ("stripe:pending:usd", 500), (seller, -500)))
    entries_before = await entry_count(engine)

    with pytest.raises(IdempotencyConflict) as raised:
        await ledger.post(draft(key, ("stripe:pending:usd", 501), (seller, -501)))

    assert raised.value.code == "idempotency_conflict"
    assert await entry_count(engine) == entries_before
    assert (await ledger.balance(seller)).posted == 10_500


@pytest.mark.parametrize(
    ("make_draft", "error"),
    [
        (
            lambda seller: draft(unique("k"), ("stripe:pending:usd", 5), ("seller:nobody_ever:payable:usd", -5)),
            UnknownAccount,
        ),
        (lambda seller: draft(unique("k"), ("stripe:pending:usd", 5), (seller, -5), currency="EUR"), CurrencyMismatch),
        (lambda seller: draft(unique("k"), ("stripe:pending:usd", 0), (seller, 0)), InvalidAmount),
        (lambda seller: draft(unique("k"), ("stripe:pending:usd", 5)), InvalidEntry),
        (lambda seller: draft(unique("k"), ("stripe:pending:usd", 5), (seller, -4)), UnbalancedEntry),
        (lambda seller: draft(unique("k"), ("stripe:pending:usd", 2**63), (seller, -(2**63))), InvalidAmount),
        (lambda seller: draft("k" * 256, ("stripe:pending:usd", 5), (seller, -5)), KeyTooLong),
        (lambda seller: draft("", ("stripe:pending:usd", 5), (seller, -5)), KeyTooLong),
        (
            lambda seller: draft(unique("k"), ("stripe:pending:usd", 5), (seller, -5), currency="XXX"),
            UnsupportedCurrency,
        ),
        (lambda seller: draft(unique("k"), ("stripe pending", 5), (seller, -5)), InvalidAccount),
        (lambda seller: draft(unique("k"), ("stripe:pending:usd", 5), (seller, -5), metadata={"k": 5}), InvalidEntry),
    ],
)
async def test_bad_input_is_a_clear_error_and_writes_nothing(
    engine: AsyncEngine, make_draft: Callable[[str], EntryDraft], error: type[LedgerError]
) -> None:
    seller = await funded_seller(engine)
    entries_before = await entry_count(engine)

    async with engine.connect() as connection:
        with pytest.raises(error) as raised:
            await books.post(connection, make_draft(seller))
        await connection.rollback()

    assert raised.value.code and raised.value.message
    assert await entry_count(engine) == entries_before
    assert (await books.Ledger(engine).balance(seller)).posted == 10_000


async def test_balance_beyond_64_bits_is_refused(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    equity = chart.account("platform:equity", "JPY")
    bank = chart.account("bank:platform", "JPY")
    await ledger.open_accounts([chart.account_spec(equity, "JPY"), chart.account_spec(bank, "JPY")])
    big = 2**63 - 1
    await ledger.post(draft(unique("k"), (bank, big), (equity, -big), currency="JPY"))

    with pytest.raises(InvalidAmount):
        await ledger.post(draft(unique("k"), (bank, 1), (equity, -1), currency="JPY"))
    assert (await ledger.balance(bank)).posted == big


async def test_a_limit_refuses_the_entry_that_would_cross_it(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    seller = await funded_seller(engine, 1000)
    await ledger.post(draft(unique("k"), (seller, 1000), ("stripe:pending:usd", -1000)))
    entries_before = await entry_count(engine)

    with pytest.raises(LimitExceeded) as raised:
        await ledger.post(draft(unique("k"), (seller, 1), ("stripe:pending:usd", -1)))

    assert raised.value.param == seller
    assert await entry_count(engine) == entries_before
    assert (await ledger.balance(seller)).posted == 0


async def test_authorization_hold_then_partial_capture_releases_the_rest(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    payment = unique("pay")
    seller = unique("acct")
    hold = chart.authorization_hold(payment, 9999, "USD")
    await open_for(engine, hold)
    clearing = chart.payment_clearing(payment, "USD")
    stripe_before = await ledger.balance("stripe:pending:usd")

    pending = await ledger.post_pending(hold)
    assert pending.status == "pending"
    held = await ledger.balance(clearing)
    assert (held.posted, held.pending) == (0, 9999)

    final = await ledger.post_pending_final(pending.id, 5000, chart.authorization_capture_key(payment))
    split = compute_split(
        5000, "USD", platform_fee_bps=1000, tax_amount=0, recipients=[SplitRecipient(seller, share_bps=10_000)]
    )
    capture = chart.capture(payment, split, after_hold=True)
    await open_for(engine, capture)
    await ledger.post(capture)

    assert final.status == "posted" and final.resolves_entry_id == pending.id
    assert (await ledger.get_entry(pending.id)).status == "posted"
    stripe_after = await ledger.balance("stripe:pending:usd")
    assert stripe_after.posted - stripe_before.posted == 5000
    assert stripe_after.pending == stripe_before.pending
    cleared = await ledger.balance(clearing)
    assert (cleared.posted, cleared.pending) == (0, 0)
    assert (await ledger.balance(chart.seller_payable(seller, "USD"))).posted == 4500
    kinds = [entry.kind for entry in await ledger.entries_by_metadata("payment_id", payment)]
    assert kinds == ["pending", "posted", "posted"]
    assert await ledger.verify() == []


async def test_a_pending_entry_is_resolved_exactly_once(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    payment = unique("pay")
    hold = chart.authorization_hold(payment, 1000, "USD")
    await open_for(engine, hold)
    pending = await ledger.post_pending(hold)

    with pytest.raises(AmountExceedsPending):
        await ledger.post_pending_final(pending.id, 1001, unique("k"))
    voided = await ledger.void_pending(pending.id, chart.authorization_void_key(payment))
    replayed = await ledger.void_pending(pending.id, chart.authorization_void_key(payment))

    assert voided.status == "voided" and voided.postings == ()
    assert (replayed.id, replayed.created) == (voided.id, False)
    with pytest.raises(EntryNotPending):
        await ledger.post_pending_final(pending.id, None, unique("k"))
    with pytest.raises(EntryNotPending):
        await ledger.void_pending(pending.id, unique("k"))
    with pytest.raises(IdempotencyConflict):
        await ledger.post_pending_final(pending.id, 10, chart.authorization_void_key(payment))
    assert (await ledger.balance(chart.payment_clearing(payment, "USD"))).pending == 0
    assert (await ledger.get_entry(pending.id)).resolved_by_entry_id == voided.id


async def test_concurrent_resolutions_of_one_hold_post_once(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    hold = chart.authorization_hold(unique("pay"), 1000, "USD")
    await open_for(engine, hold)
    pending = await ledger.post_pending(hold)

    results = await asyncio.gather(
        *(ledger.post_pending_final(pending.id, 100 + number, unique("k")) for number in range(6)),
        return_exceptions=True,
    )

    posted = [result for result in results if not isinstance(result, BaseException)]
    assert len(posted) == 1
    assert all(isinstance(result, EntryNotPending) for result in results if isinstance(result, BaseException))


async def test_pending_entries_have_one_debit_and_one_credit(engine: AsyncEngine) -> None:
    seller = await funded_seller(engine)
    three = draft(unique("k"), ("stripe:pending:usd", 10), (seller, -5), ("platform:fees:usd", -5))
    with pytest.raises(InvalidEntry):
        await books.Ledger(engine).post_pending(three)


async def test_a_pending_debit_counts_against_the_limit(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    seller = await funded_seller(engine, 1000)
    reservation = await ledger.post_pending(draft(unique("k"), (seller, 800), ("stripe:pending:usd", -800)))

    with pytest.raises(LimitExceeded):
        await ledger.post(draft(unique("k"), (seller, 201), ("stripe:pending:usd", -201)))
    assert (await ledger.balance(seller)).available == 200
    await ledger.void_pending(reservation.id, unique("k"))
    await ledger.post(draft(unique("k"), (seller, 1000), ("stripe:pending:usd", -1000)))
    assert (await ledger.balance(seller)).posted == 0


async def test_reverse_appends_the_mirror_once(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    seller = await funded_seller(engine, 1000)
    original = await ledger.post(draft(unique("k"), ("stripe:pending:usd", 300), (seller, -300)))
    key = unique("reversal")

    reversal = await ledger.reverse(original.id, "posted twice by mistake", key)
    replay = await ledger.reverse(original.id, "posted twice by mistake", key)

    assert reversal.reverses_entry_id == original.id
    assert sorted((p.account, p.amount) for p in reversal.postings) == sorted(
        (p.account, -p.amount) for p in original.postings
    )
    assert (replay.id, replay.created) == (reversal.id, False)
    assert (await ledger.balance(seller)).posted == 1000
    assert (await ledger.get_entry(original.id)).status == "posted"  # history is not rewritten
    with pytest.raises(NotReversible):
        await ledger.reverse(original.id, "again", unique("reversal"))
    with pytest.raises(NotReversible):
        await ledger.reverse(reversal.id, "undo the undo", unique("reversal"))
    with pytest.raises(UnknownEntry):
        await ledger.reverse(10**12, "missing", unique("reversal"))


async def test_a_pending_entry_is_voided_not_reversed(engine: AsyncEngine) -> None:
    hold = chart.authorization_hold(unique("pay"), 100, "USD")
    await open_for(engine, hold)
    pending = await books.Ledger(engine).post_pending(hold)
    with pytest.raises(NotReversible):
        await books.Ledger(engine).reverse(pending.id, "no", unique("reversal"))


async def test_balance_as_of_uses_effective_time(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    seller = await funded_seller(engine, 1000)
    last_week = datetime.now(UTC) - timedelta(days=7)
    await ledger.post(
        draft(unique("k"), (seller, 100), ("stripe:pending:usd", -100), effective_at=last_week - timedelta(days=1))
    )

    assert (await ledger.balance(seller, as_of=last_week - timedelta(days=2))).posted == 0
    assert (await ledger.balance(seller, as_of=last_week)).posted == -100
    assert (await ledger.balance(seller, as_of=datetime.now(UTC) + timedelta(seconds=5))).posted == 900
    assert (await ledger.balance(seller)).posted == 900


async def test_entries_page_newest_first(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    seller = await funded_seller(engine, 1000)
    posted = [await ledger.post(draft(unique("k"), (seller, 1), ("stripe:pending:usd", -1))) for _ in range(5)]

    first_page = await ledger.entries(seller, limit=3)
    second_page = await ledger.entries(seller, limit=3, starting_after=first_page[-1].id)

    newest_first = [entry.id for entry in reversed(posted)]
    assert [entry.id for entry in first_page] == newest_first[:3]
    assert [entry.id for entry in second_page] == [*newest_first[3:], second_page[-1].id]
    assert len(second_page) == 3  # the two remaining transfers and the funding capture
    with pytest.raises(InvalidEntry):
        await ledger.entries(seller, limit=101)


async def test_list_accounts_pages_by_code(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    first = await ledger.list_accounts(limit=2)
    second = await ledger.list_accounts(limit=2, starting_after=first[-1].account)
    assert [balance.account for balance in first] == sorted(balance.account for balance in first)
    assert second and second[0].account > first[-1].account


async def test_open_accounts_is_idempotent_but_refuses_a_different_account(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    code = f"seller:{unique('acct')}:payable:usd"
    spec = chart.account_spec(code, "USD")
    await ledger.open_accounts([spec])
    await ledger.open_accounts([spec])
    with pytest.raises(AccountConflict):
        await ledger.open_accounts([AccountSpec(code, "asset", "USD")])
    with pytest.raises(UnknownAccount):
        await ledger.balance("seller:never_opened:payable:usd")


# ---------------------------------------------------------------------------------------------
# What the database refuses on its own


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger.postings SET amount = amount + 1",
        "DELETE FROM ledger.postings",
        "UPDATE ledger.entries SET description = 'rewritten'",
        "DELETE FROM ledger.entries",
        "TRUNCATE ledger.postings CASCADE",
        "UPDATE ledger.accounts SET must_not_go_negative = false",
        "UPDATE ledger.account_balances SET credits_posted = credits_posted + 1",
        "DELETE FROM ledger.account_balances",
    ],
)
async def test_history_cannot_be_rewritten_with_sql(engine: AsyncEngine, statement: str) -> None:
    await funded_seller(engine)
    async with engine.connect() as connection:
        with pytest.raises(DBAPIError, match=r"append-only|derived from postings"):
            await connection.execute(text(statement))
        await connection.rollback()
    assert await books.Ledger(engine).verify() == []


async def _account_id(engine: AsyncEngine, code: str) -> int:
    async with engine.connect() as connection:
        return int(
            (await connection.execute(text("SELECT id FROM ledger.accounts WHERE code = :c"), {"c": code})).scalar_one()
        )


async def test_an_unbalanced_entry_cannot_be_committed_with_sql(engine: AsyncEngine) -> None:
    seller = await funded_seller(engine)
    seller_id = await _account_id(engine, seller)
    entries_before = await entry_count(engine)
    with pytest.raises(DBAPIError, match="does not balance"):
        async with engine.begin() as connection:
            entry_id = (
                await connection.execute(
                    text(
                        "INSERT INTO ledger.entries (idempotency_key, fingerprint, kind, description)"
                        " VALUES (:key, 'x', 'posted', 'sneaky') RETURNING id"
                    ),
                    {"key": unique("sql")},
                )
            ).scalar_one()
            for line, amount in enumerate([-100, 99]):
                await connection.execute(
                    text(
                        "INSERT INTO ledger.postings (entry_id, line, account_id, currency, amount)"
                        " VALUES (:entry, :line, :account, 'USD', :amount)"
                    ),
                    {"entry": entry_id, "line": line, "account": seller_id, "amount": amount},
                )
    assert await entry_count(engine) == entries_before


async def test_postings_cannot_be_added_to_a_committed_entry(engine: AsyncEngine) -> None:
    seller = await funded_seller(engine)
    seller_id = await _account_id(engine, seller)
    entry = await books.Ledger(engine).post(draft(unique("k"), ("stripe:pending:usd", 5), (seller, -5)))
    with pytest.raises(DBAPIError, match="only be added by the transaction"):
        async with engine.begin() as connection:
            for line, amount in ((7, 50), (8, -50)):
                await connection.execute(
                    text(
                        "INSERT INTO ledger.postings (entry_id, line, account_id, currency, amount)"
                        " VALUES (:entry, :line, :account, 'USD', :amount)"
                    ),
                    {"entry": entry.id, "line": line, "account": seller_id, "amount": amount},
                )


async def test_verify_reports_a_tampered_balance(engine: AsyncEngine) -> None:
    seller = await funded_seller(engine)
    seller_id = await _account_id(engine, seller)
    tamper = "UPDATE ledger.account_balances SET credits_posted = credits_posted + :delta WHERE account_id = :id"
    # Only a superuser disabling every trigger can do this; verify must notice.
    async with engine.begin() as connection:
        await connection.execute(text("SET LOCAL session_replication_role = replica"))
        await connection.execute(text(tamper), {"delta": 1, "id": seller_id})
    try:
        findings = await books.Ledger(engine).verify()
        assert {finding.code for finding in findings} == {"balance_mismatch", "ledger_unbalanced"}
        assert any(finding.account == seller for finding in findings)
    finally:
        async with engine.begin() as connection:
            await connection.execute(text("SET LOCAL session_replication_role = replica"))
            await connection.execute(text(tamper), {"delta": -1, "id": seller_id})
    assert await books.Ledger(engine).verify() == []


# ---------------------------------------------------------------------------------------------
# Concurrency: the Jepsen "bank" — transfers between hot accounts with limits


async def test_concurrent_transfers_keep_limits_and_the_total(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    sellers = [await funded_seller(engine, 1000) for _ in range(4)]
    tasks_count, transfers_per_task = 40, 15
    randomness = random.Random(7)
    plans = [
        [(randomness.sample(sellers, 2), randomness.randrange(1, 400)) for _ in range(transfers_per_task)]
        for _ in range(tasks_count)
    ]
    refused = 0

    async def run(plan: list[tuple[list[str], int]]) -> None:
        nonlocal refused
        for (source, target), amount in plan:
            # Each transfer also touches the hot, unlimited stripe:pending account twice.
            entry = draft(
                unique("bank"),
                (source, amount),
                ("stripe:pending:usd", -amount),
                ("stripe:pending:usd", amount),
                (target, -amount),
            )
            try:
                await ledger.post(entry)
            except LimitExceeded:
                refused += 1

    await asyncio.wait_for(asyncio.gather(*(run(plan) for plan in plans)), timeout=120)

    balances = [await ledger.balance(seller) for seller in sellers]
    assert all(balance.posted >= 0 for balance in balances)
    assert sum(balance.posted for balance in balances) == 4000
    assert 0 < refused < tasks_count * transfers_per_task
    assert await ledger.verify() == []


# ---------------------------------------------------------------------------------------------
# post_many, accounts opened with the entry, and the caller's transaction (ledger.post_entries)


async def test_post_many_posts_a_batch_and_each_entry_is_idempotent_by_its_own_key(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    seller_a, seller_b = chart.seller_payable(unique("acct"), "USD"), chart.seller_payable(unique("acct"), "USD")
    keys = [unique("batch") for _ in range(3)]
    batch = [
        draft(keys[0], ("stripe:pending:usd", 700), (seller_a, -700)),
        draft(keys[1], ("stripe:pending:usd", 300), (seller_b, -300)),
        draft(keys[2], ("stripe:pending:usd", 50), (seller_a, -50)),
    ]
    accounts = [spec for entry in batch for spec in chart.accounts_for(entry)]

    first = await ledger.post_many(batch, accounts=accounts)
    again = await ledger.post_many([batch[1], draft(unique("batch"), ("stripe:pending:usd", 5), (seller_b, -5))])

    assert [(entry.idempotency_key, entry.created, entry.status) for entry in first] == [
        (keys[0], True, "posted"),
        (keys[1], True, "posted"),
        (keys[2], True, "posted"),
    ]
    assert len({entry.id for entry in first}) == 3
    assert (again[0].id, again[0].created, again[1].created) == (first[1].id, False, True)
    assert (await ledger.balance(seller_a)).posted == 750
    assert (await ledger.balance(seller_b)).posted == 305
    assert (await ledger.get_entry(first[2].id)).postings == batch[2].postings
    assert await ledger.verify() == []


async def test_a_conflict_anywhere_in_a_batch_writes_none_of_it(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    seller = await funded_seller(engine)
    used = unique("key")
    await ledger.post(draft(used, ("stripe:pending:usd", 500), (seller, -500)))
    entries_before = await entry_count(engine)
    batch = [
        draft(unique("key"), ("stripe:pending:usd", 10), (seller, -10)),
        draft(used, ("stripe:pending:usd", 501), (seller, -501)),
    ]

    with pytest.raises(IdempotencyConflict):
        await ledger.post_many(batch)
    with pytest.raises(InvalidEntry) as twice:
        await ledger.post_many([batch[0], batch[0]])
    with pytest.raises(InvalidEntry):
        await ledger.post_many([])

    assert "twice" in str(twice.value)
    assert await entry_count(engine) == entries_before
    assert (await ledger.balance(seller)).posted == 10_500


async def test_post_opens_its_accounts_in_the_same_statement(engine: AsyncEngine) -> None:
    ledger = books.Ledger(engine)
    seller = chart.seller_payable(unique("acct"), "USD")
    capture = draft(unique("key"), ("stripe:pending:usd", 400), (seller, -400))
    with pytest.raises(UnknownAccount):
        await ledger.post(capture)

    entry = await ledger.post(capture, accounts=chart.accounts_for(capture))
    entries_before = await entry_count(engine)
    clash = AccountSpec(seller, "asset", "USD")
    with pytest.raises(AccountConflict) as raised:
        await ledger.post(draft(unique("key"), ("stripe:pending:usd", 1), (seller, -1)), accounts=[clash])

    assert entry.created and (await ledger.balance(seller)).posted == 400
    assert seller in str(raised.value) and "liability" in str(raised.value)
    assert await entry_count(engine) == entries_before


class _CallerRollsBack(Exception):
    pass


@pytest.mark.parametrize("first_statement", ["the ledger's", "the caller's"])
async def test_an_entry_posted_in_a_caller_transaction_commits_or_rolls_back_with_it(
    engine: AsyncEngine, first_statement: str
) -> None:
    seller = await funded_seller(engine)
    ledger = books.Ledger(engine)
    kept, dropped = unique("key"), unique("key")

    async def post_in_transaction(key: str, fail: bool) -> None:
        async with engine.begin() as connection:
            if first_statement == "the caller's":
                await connection.execute(text("SELECT 1"))
            await books.post(connection, draft(key, ("stripe:pending:usd", 25), (seller, -25)))
            if fail:
                raise _CallerRollsBack

    await post_in_transaction(kept, fail=False)
    with pytest.raises(_CallerRollsBack):
        await post_in_transaction(dropped, fail=True)

    async with engine.connect() as connection:
        found = (
            await connection.execute(
                text("SELECT idempotency_key FROM ledger.entries WHERE idempotency_key = ANY(:keys)"),
                {"keys": [kept, dropped]},
            )
        ).scalars()
        assert list(found) == [kept]
    assert (await ledger.balance(seller)).posted == 10_025


async def test_a_ledger_error_in_a_caller_transaction_leaves_it_to_roll_back(engine: AsyncEngine) -> None:
    seller = await funded_seller(engine)
    async with engine.connect() as connection:
        # No BEGIN yet: the ledger's statement goes through SQLAlchemy, which begins one.
        await books.post(connection, draft(unique("key"), ("stripe:pending:usd", 5), (seller, -5)))
        await connection.commit()
        await connection.begin()
        with pytest.raises(UnknownAccount):
            await books.post(connection, draft(unique("key"), ("stripe:pending:usd", 5), ("seller:x:payable:usd", -5)))
        await connection.rollback()
        # The connection is usable again, inside a new transaction.
        await connection.begin()
        entry = await books.post(connection, draft(unique("key"), ("stripe:pending:usd", 7), (seller, -7)))
        await connection.commit()
    assert entry.created
    assert (await books.Ledger(engine).balance(seller)).posted == 10_012


async def test_the_ledger_statement_rides_the_driver_connection_inside_a_transaction(engine: AsyncEngine) -> None:
    """The fast path (asyncpg, prepared) is taken inside a begun transaction; elsewhere the
    statement goes through SQLAlchemy. If a SQLAlchemy upgrade changes its adapter, this
    fails, rather than the ledger silently getting slower."""
    import asyncpg

    async with engine.begin() as connection:
        driver = await books._driver_connection(connection)
        assert isinstance(driver, asyncpg.Connection)
        assert driver.is_in_transaction()
    async with engine.connect() as connection:
        assert await books._driver_connection(connection) is None


async def test_posting_functions_plan_their_statements_once(engine: AsyncEngine) -> None:
    """Migration 0012: the posting path's functions run with generic plans, not a new plan per
    entry (bench/PROFILE.md); every other function keeps the server's default."""
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    "SELECT p.proname, coalesce(p.proconfig, '{}') FROM pg_proc p"
                    " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'ledger'"
                )
            )
        ).all()
    generic = {name for name, config in rows if "plan_cache_mode=force_generic_plan" in config}
    assert generic == {
        "post_entries",
        "post_entry",
        "resolve_pending",
        "apply_postings",
        "release_pending",
        "check_entry",
    }
    assert all(config == [] for name, config in rows if name not in generic)
