"""Stateful property test: random sequences of posts, holds, captures, voids, reversals and
retries against the real ledger, compared after every step with an independent in-memory
model of the expected balances; `verify()` must find nothing after every step.

Hypothesis' state machines are synchronous, so the machine runs in a worker thread and
hands each ledger call to the test's event loop (which owns the engine's connections).
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import chart
from ledger import ledger as books
from ledger.errors import AmountExceedsPending, EntryNotPending, IdempotencyConflict, LimitExceeded, NotReversible
from ledger.models import AccountSpec, EntryDraft, Posting

T = TypeVar("T")
EXAMPLES = 25
STEPS = 20
_runs = itertools.count(1)


@dataclass
class Model:
    """Expected balances, in the account's normal direction, computed without the database."""

    posted: dict[str, int] = field(default_factory=dict)
    pending_out: dict[str, int] = field(default_factory=dict)  # held amounts counting against a limit
    entries: dict[int, tuple[tuple[str, int], ...]] = field(default_factory=dict)  # posted entry -> normal deltas
    reversed_ids: set[int] = field(default_factory=set)
    holds: dict[int, tuple[str, str, int]] = field(default_factory=dict)  # pending id -> (debit, credit, amount)
    drafts_by_key: dict[str, EntryDraft] = field(default_factory=dict)


class LedgerMachine(RuleBasedStateMachine):
    """Two sellers (liabilities with a limit) and the hot stripe:pending asset."""

    engine: AsyncEngine
    loop: asyncio.AbstractEventLoop

    posted_entries = Bundle("posted_entries")
    holds = Bundle("holds")

    def __init__(self) -> None:
        super().__init__()
        run = next(_runs)
        self.prefix = f"sm{run}_{id(self)}"
        # Each run gets its own accounts, so earlier runs never disturb the model.
        self.sellers = [chart.seller_payable(f"{self.prefix}_{index}", "USD") for index in range(2)]
        self.cash = f"cash:{self.prefix}:usd"  # an unlimited asset standing in for the processor
        self.model = Model()
        self.keys = itertools.count(1)
        specs = [chart.account_spec(code, "USD") for code in self.sellers]
        specs.append(AccountSpec(self.cash, "asset", "USD"))
        self.call(books.Ledger(self.engine).open_accounts(specs))
        self.model.posted.update(dict.fromkeys([*self.sellers, self.cash], 0))
        for seller in range(2):
            self.credit_seller(seller, 1000)

    def call(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout=60)

    @property
    def ledger(self) -> books.Ledger:
        return books.Ledger(self.engine)

    def new_key(self) -> str:
        return f"{self.prefix}:{next(self.keys)}"

    def available(self, seller: str) -> int:
        return self.model.posted[seller] - self.model.pending_out.get(seller, 0)

    def apply(self, entry_id: int, deltas: tuple[tuple[str, int], ...]) -> None:
        for account, delta in deltas:
            self.model.posted[account] += delta
        self.model.entries[entry_id] = deltas

    # Deltas in normal direction: cash is an asset (debit +), sellers are liabilities (credit +).
    @rule(target=posted_entries, seller=st.integers(0, 1), amount=st.integers(1, 500))
    def credit_seller(self, seller: int, amount: int) -> int:
        code = self.sellers[seller]
        draft = EntryDraft(self.new_key(), "sale", (Posting(self.cash, amount, "USD"), Posting(code, -amount, "USD")))
        entry = self.call(self.ledger.post(draft))
        self.model.drafts_by_key[draft.idempotency_key] = draft
        self.apply(entry.id, ((self.cash, amount), (code, amount)))
        return entry.id

    @rule(target=posted_entries, seller=st.integers(0, 1), amount=st.integers(1, 800))
    def pay_seller(self, seller: int, amount: int) -> int:
        code = self.sellers[seller]
        draft = EntryDraft(self.new_key(), "payout", (Posting(code, amount, "USD"), Posting(self.cash, -amount, "USD")))
        if amount > self.available(code):
            try:
                self.call(self.ledger.post(draft))
            except LimitExceeded:
                return -1
            raise AssertionError("the ledger let a seller payable go negative")
        entry = self.call(self.ledger.post(draft))
        self.model.drafts_by_key[draft.idempotency_key] = draft
        self.apply(entry.id, ((code, -amount), (self.cash, -amount)))
        return entry.id

    @rule(target=holds, seller=st.integers(0, 1), amount=st.integers(1, 800))
    def hold(self, seller: int, amount: int) -> int:
        return self._hold(seller, amount)

    def _hold(self, seller: int, amount: int) -> int:
        """Place a hold; its entry id, or -1 when the seller's limit refused it.

        Undecorated so other rules can call it: `@rule(target=...)` types its method as
        returning either the value or `multiple(...)` results."""
        code = self.sellers[seller]
        draft = EntryDraft(self.new_key(), "hold", (Posting(code, amount, "USD"), Posting(self.cash, -amount, "USD")))
        if amount > self.available(code):
            try:
                self.call(self.ledger.post_pending(draft))
            except LimitExceeded:
                return -1
            raise AssertionError("a hold crossed a limit")
        entry = self.call(self.ledger.post_pending(draft))
        self.model.holds[entry.id] = (code, self.cash, amount)
        self.model.pending_out[code] = self.model.pending_out.get(code, 0) + amount
        return entry.id

    def _release(self, hold_id: int) -> tuple[str, str, int]:
        seller, cash, amount = self.model.holds.pop(hold_id)
        self.model.pending_out[seller] -= amount
        return seller, cash, amount

    @rule(hold_id=holds, fraction=st.integers(1, 100))
    def capture_hold(self, hold_id: int, fraction: int) -> None:
        key = self.new_key()
        if hold_id not in self.model.holds:
            if hold_id > 0:
                try:
                    self.call(self.ledger.post_pending_final(hold_id, None, key))
                except EntryNotPending:
                    return
                raise AssertionError("a resolved hold was posted again")
            return
        held = self.model.holds[hold_id][2]
        amount = max(1, held * fraction // 100)
        entry = self.call(self.ledger.post_pending_final(hold_id, amount, key))
        seller, cash, _ = self._release(hold_id)
        self.apply(entry.id, ((seller, -amount), (cash, -amount)))
        replay = self.call(self.ledger.post_pending_final(hold_id, amount, key))
        assert (replay.id, replay.created) == (entry.id, False)

    @rule(seller=st.integers(0, 1), amount=st.integers(1, 800), fraction=st.integers(0, 100))
    def hold_then_resolve(self, seller: int, amount: int, fraction: int) -> None:
        """A hold resolved at once: captured for `fraction` percent of it, or voided when 0."""
        hold_id = self._hold(seller, amount)
        if hold_id < 0:
            return
        if fraction == 0:
            self.void_hold(hold_id)
        else:
            self.capture_hold(hold_id, fraction)

    @rule(hold_id=holds)
    def void_hold(self, hold_id: int) -> None:
        if hold_id not in self.model.holds:
            return
        self.call(self.ledger.void_pending(hold_id, self.new_key()))
        self._release(hold_id)

    @rule(hold_id=holds)
    def capture_too_much(self, hold_id: int) -> None:
        if hold_id not in self.model.holds:
            return
        try:
            self.call(self.ledger.post_pending_final(hold_id, self.model.holds[hold_id][2] + 1, self.new_key()))
        except AmountExceedsPending:
            return
        raise AssertionError("posted more than was held")

    @rule(entry_id=posted_entries)
    def reverse(self, entry_id: int) -> None:
        if entry_id < 0 or entry_id not in self.model.entries:
            return
        deltas = self.model.entries[entry_id]
        mirror = tuple((account, -delta) for account, delta in deltas)
        would_cross = any(account in self.sellers and self.available(account) + delta < 0 for account, delta in mirror)
        try:
            self.call(self.ledger.reverse(entry_id, "stateful test", self.new_key()))
        except NotReversible:
            assert entry_id in self.model.reversed_ids
            return
        except LimitExceeded:
            assert would_cross
            return
        assert entry_id not in self.model.reversed_ids and not would_cross
        self.model.reversed_ids.add(entry_id)
        for account, delta in mirror:
            self.model.posted[account] += delta

    @rule(data=st.data())
    def retry_a_key(self, data: st.DataObject) -> None:
        if not self.model.drafts_by_key:
            return
        key = data.draw(st.sampled_from(sorted(self.model.drafts_by_key)))
        original = self.model.drafts_by_key[key]
        same = self.call(self.ledger.post(original))
        assert not same.created
        different = EntryDraft(
            key, "conflict", tuple(Posting(p.account, p.amount * 2, p.currency) for p in original.postings)
        )
        try:
            self.call(self.ledger.post(different))
        except IdempotencyConflict:
            return
        raise AssertionError("a key was reused for different postings")

    @invariant()
    def ledger_matches_the_model(self) -> None:
        for account, expected in self.model.posted.items():
            balance = self.call(self.ledger.balance(account))
            assert balance.posted == expected, (account, balance, expected)
            if account in self.sellers:
                assert balance.available == self.available(account)
        assert self.call(self.ledger.verify()) == []


async def test_random_operations_agree_with_the_model(engine: AsyncEngine) -> None:
    loop = asyncio.get_running_loop()

    class Machine(LedgerMachine):
        pass

    Machine.engine = engine
    Machine.loop = loop
    machine_settings = settings(
        max_examples=EXAMPLES,
        stateful_step_count=STEPS,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    await asyncio.to_thread(run_state_machine_as_test, Machine, settings=machine_settings)
