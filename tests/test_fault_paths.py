"""Fault paths on the real stack: every unhappy path ends in a legal state or in review, and the money is right.

Each test injects its fault through the emulator's control API (or the database), then checks
what a user would notice: the emulator's objects, the payment's ledger postings (exact, per
payment), the review queue, the outbox and the workflow's own status (never Failed).
Issue [fault-paths] Why 1–11; the test names say which.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import text
from temporalio.client import WorkflowExecutionStatus, WorkflowHandle, WorkflowUpdateFailedError

from ledger import chart
from ledger import ledger as books
from ledger.money import CaptureSplit
from tests.payment_fixtures import FAST_TIMINGS, PaymentStack
from tests.test_payment_workflow import (
    audit_trail,
    intents_for,
    ledger_findings,
    new_order,
    payment_row,
    settle,
    start,
    wait_for_status,
)
from workflows.ids import PAYMENT_ID_PATTERN
from workflows.payment_models import (
    QUERY_STATE,
    SIGNAL_STRIPE_EVENT,
    UPDATE_CANCEL,
    UPDATE_CAPTURE,
    UPDATE_RESOLVE_REVIEW,
    CancelRequest,
    CaptureRequest,
    PaymentState,
    ResolveReviewRequest,
    SplitRecipientSpec,
    StripeEventSignal,
)

RESULT_TIMEOUT_SECONDS = 60


def two_recipient_order(**overrides: Any) -> Any:
    seller, driver = f"acct_s{uuid.uuid4().hex[:10]}", f"acct_d{uuid.uuid4().hex[:10]}"
    return new_order(
        amount=10_000,
        recipients=[
            SplitRecipientSpec(seller, share_bps=7000),
            SplitRecipientSpec(driver, share_bps=3000, role="driver"),
        ],
        platform_fee_bps=1000,
        tax_amount=500,
        **overrides,
    )


async def postings_by_account(stack: PaymentStack, payment_id: str) -> dict[str, int]:
    """The payment's posted ledger movements, summed per account (debits positive); zero sums left out."""
    async with stack.engine.connect() as connection:
        rows = await connection.execute(
            text(
                """
                SELECT a.code, sum(p.amount) AS amount
                FROM ledger.postings p
                JOIN ledger.entries e ON e.id = p.entry_id
                JOIN ledger.accounts a ON a.id = p.account_id
                WHERE e.metadata->>'payment_id' = :id AND e.kind = 'posted'
                GROUP BY a.code
                """
            ),
            {"id": payment_id},
        )
        return {row.code: int(row.amount) for row in rows if int(row.amount) != 0}


async def review_items(stack: PaymentStack, payment_id: str) -> list[Any]:
    async with stack.engine.connect() as connection:
        return list(
            await connection.execute(
                text(
                    """
                    SELECT kind, reason, details, status, resolution, resolved_by, resolution_note, resolved_at
                    FROM review_items WHERE payment_id = :id ORDER BY id
                    """
                ),
                {"id": payment_id},
            )
        )


async def outbox_topics(stack: PaymentStack, payment_id: str) -> list[str]:
    async with stack.engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT topic FROM outbox WHERE aggregate_id = :id ORDER BY id"), {"id": payment_id}
        )
        return [row.topic for row in rows]


def transfers_for(stack: PaymentStack, order_id: str) -> list[dict[str, Any]]:
    return [
        transfer
        for transfer in stack.emulator.control.state(["transfers"])["transfers"]
        if transfer.get("transfer_group") == order_id
    ]


def stripe_fee(stack: PaymentStack, charge_id: str) -> int:
    state = stack.emulator.control.state(["charges", "balance_transactions"])
    [charge] = [charge for charge in state["charges"] if charge["id"] == charge_id]
    [transaction] = [bt for bt in state["balance_transactions"] if bt["id"] == charge["balance_transaction"]]
    return int(transaction["fee"])


async def resolve(handle: WorkflowHandle[Any, Any], resolution: str, note: str = "checked at Stripe") -> PaymentState:
    return await handle.execute_update(  # type: ignore[no-any-return]
        UPDATE_RESOLVE_REVIEW,
        ResolveReviewRequest(resolution=resolution, note=note, operator="olga"),
        result_type=PaymentState,
    )


async def running(handle: WorkflowHandle[Any, Any]) -> bool:
    return (await handle.describe()).status == WorkflowExecutionStatus.RUNNING


def paid_by_destination(payment_stack: PaymentStack, order_id: str) -> dict[str, int]:
    """The order's transfers at the emulator, amount by destination account."""
    return {transfer["destination"]: transfer["amount"] for transfer in transfers_for(payment_stack, order_id)}


def settled_postings(split: Any, fee: int, seller_parts: dict[str, int]) -> dict[str, int]:
    """What a settled payment leaves in the ledger: the platform keeps fee + tax minus Stripe's fee."""
    net = split.total - fee - sum(seller_parts.values())
    expected = {
        "stripe:available:usd": net,
        "platform:fees:usd": -split.platform_fee,
        "platform:processing_fees:usd": fee,
    }
    if split.tax:
        expected["tax:payable:usd"] = -split.tax
    return expected


# ---------------------------------------------------------------------------------------- Why 1


async def test_why1_stripe_down_after_capture_goes_to_review_and_retry_pays_everyone(
    payment_stack: PaymentStack,
) -> None:
    """Stripe's charge lookups fail after capture: the sellers are still paid (the fee came with
    the confirm response, patch fee-from-intent-v1), the settlement poll fails past its retries
    into review (not a Failed workflow), and a retry settles with nothing paid twice."""
    down = payment_stack.emulator.control.add_fault("GET", "/v1/charges/*", "error_500_before")
    payment = two_recipient_order()
    state, handle = await start(payment_stack, payment)
    state = await wait_for_status(handle, "NEEDS_REVIEW")
    assert await running(handle)
    [item] = await review_items(payment_stack, state.payment_id)
    assert (item.kind, item.status) == ("step_failed", "open")
    assert item.details["step"] == "stripe_charge_balance"
    assert item.details["status_before"] == "CAPTURED"
    assert item.details["payment_intent"] == state.stripe_payment_intent_id
    assert "retry" in item.details["resume"]
    assert state.split is not None
    paid = paid_by_destination(payment_stack, payment.order_id)
    assert paid == {part.account_id: part.amount for part in state.split.parts}
    row = await payment_row(payment_stack, state.payment_id)
    assert (row.status, row.amount_captured) == ("NEEDS_REVIEW", 10_000)

    payment_stack.emulator.control.remove_fault(down)
    resumed = await resolve(handle, "retry")
    assert resumed.status == "CAPTURED"
    final = await settle(payment_stack, handle)
    assert final.status == "SETTLED"
    assert final.split is not None
    assert len(transfers_for(payment_stack, payment.order_id)) == 2
    fee = stripe_fee(payment_stack, str(final.stripe_charge_id))
    assert final.stripe_fee == fee
    assert await postings_by_account(payment_stack, state.payment_id) == settled_postings(final.split, fee, paid)
    [item] = await review_items(payment_stack, state.payment_id)
    assert (item.status, item.resolution, item.resolved_by) == ("resolved", "retry", "operator:olga")
    assert item.resolution_note == "checked at Stripe" and item.resolved_at is not None
    assert await ledger_findings(payment_stack) == []


async def test_why1_fee_lookup_after_an_ambiguous_create_fails_into_review_and_retry_pays_everyone(
    payment_stack: PaymentStack,
) -> None:
    """A PaymentIntent found by lookup (the create's answer was lost) carries no fee, so the fee
    is looked up on the charge; with charges down that lookup fails past its retries into
    review before anyone is paid, and a retry pays everyone once."""
    payment_stack.emulator.control.add_fault("POST", "/v1/payment_intents", "error_500_after", count=1)
    down = payment_stack.emulator.control.add_fault("GET", "/v1/charges/*", "error_500_before")
    payment = two_recipient_order()
    state, handle = await start(payment_stack, payment)
    state = await wait_for_status(handle, "NEEDS_REVIEW")
    assert await running(handle)
    [item] = await review_items(payment_stack, state.payment_id)
    assert (item.kind, item.details["step"], item.details["status_before"]) == (
        "step_failed",
        "stripe_charge_balance",
        "CAPTURED",
    )
    assert transfers_for(payment_stack, payment.order_id) == []
    assert len(intents_for(payment_stack, payment.order_id)) == 1

    payment_stack.emulator.control.remove_fault(down)
    assert (await resolve(handle, "retry")).status == "CAPTURED"
    final = await settle(payment_stack, handle)
    assert final.status == "SETTLED" and final.split is not None
    paid = paid_by_destination(payment_stack, payment.order_id)
    assert paid == {part.account_id: part.amount for part in final.split.parts}
    assert len(transfers_for(payment_stack, payment.order_id)) == 2
    fee = stripe_fee(payment_stack, str(final.stripe_charge_id))
    assert await postings_by_account(payment_stack, state.payment_id) == settled_postings(final.split, fee, paid)
    assert await ledger_findings(payment_stack) == []


async def test_why1_authorization_expiry_cancel_failing_goes_to_review(payment_stack: PaymentStack) -> None:
    payment_stack.emulator.control.add_fault("POST", "/v1/payment_intents/*/cancel", "error_500_before")
    payment = new_order(capture_method="manual", timings=replace(FAST_TIMINGS, authorization_expiry_seconds=2))
    state, handle = await start(payment_stack, payment)
    assert state.status == "AUTHORIZED"
    state = await wait_for_status(handle, "NEEDS_REVIEW")
    assert await running(handle)
    [item] = await review_items(payment_stack, state.payment_id)
    assert (item.kind, item.details["step"], item.details["status_before"]) == (
        "processor_uncertain",
        "cancel",
        "AUTHORIZED",
    )
    [intent] = intents_for(payment_stack, payment.order_id)
    assert intent["status"] == "requires_capture"
    # The hold is still pending in the ledger: nothing was released that Stripe did not release.
    assert await postings_by_account(payment_stack, state.payment_id) == {}


async def test_why1_transition_conflict_goes_to_review(payment_stack: PaymentStack) -> None:
    """The payments row moved behind the workflow's back: the next transition conflicts; review, not Failed."""
    payment = new_order(capture_method="manual")
    state, handle = await start(payment_stack, payment)
    async with payment_stack.engine.begin() as connection:
        await connection.execute(
            text("UPDATE payments SET status = 'CANCELED' WHERE id = :id"), {"id": state.payment_id}
        )
    captured = await handle.execute_update(UPDATE_CAPTURE, CaptureRequest(), result_type=PaymentState)
    assert captured.status == "NEEDS_REVIEW"
    [item] = await review_items(payment_stack, state.payment_id)
    assert item.details["error_type"] == "TransitionConflict"
    assert item.details["step"] == "apply_transition"
    row = await payment_row(payment_stack, state.payment_id)
    assert row.status == "NEEDS_REVIEW"
    assert await running(handle)


# ---------------------------------------------------------------------------------------- Why 2


async def test_why2_ledger_error_is_final_and_goes_to_review(payment_stack: PaymentStack) -> None:
    """A posting the ledger refuses (its key already holds other postings) is not retried forever."""
    payment = new_order(capture_method="manual")
    state, handle = await start(payment_stack, payment)
    assert state.split is not None
    # Someone booked this payment's capture key with a different split: the real capture must be refused.
    wrong = CaptureSplit(total=9999, currency="USD", platform_fee=9999, tax=0, recipients=())
    async with payment_stack.engine.begin() as connection:
        draft = chart.capture(state.payment_id, wrong)
        await books.open_accounts(connection, chart.accounts_for(draft))
        await books.post(connection, draft)
    started = asyncio.get_running_loop().time()
    captured = await handle.execute_update(UPDATE_CAPTURE, CaptureRequest(), result_type=PaymentState)
    assert captured.status == "NEEDS_REVIEW"
    assert asyncio.get_running_loop().time() - started < 30, "a ledger refusal must not be retried"
    [item] = await review_items(payment_stack, state.payment_id)
    assert item.details["error_type"] == "LedgerRejected"
    assert item.details["status_before"] == "AUTHORIZED"
    # Stripe captured: the review says so, and "captured" is a resolution Stripe agrees with.
    [intent] = intents_for(payment_stack, payment.order_id)
    assert intent["status"] == "succeeded"


# ---------------------------------------------------------------------------------------- Why 3


async def test_why3_retry_after_failed_transfer_pays_only_the_unpaid_recipient(payment_stack: PaymentStack) -> None:
    payment = two_recipient_order()
    driver = payment.recipients[1].account_id
    failing = payment_stack.emulator.control.add_fault(
        "POST", "/v1/transfers", "error_500_before", params={"destination": driver}
    )
    state, handle = await start(payment_stack, payment)
    state = await wait_for_status(handle, "NEEDS_REVIEW")
    [item] = await review_items(payment_stack, state.payment_id)
    assert item.kind == "transfer_failed" and item.details["unpaid_recipients"] == driver
    assert [transfer["destination"] for transfer in transfers_for(payment_stack, payment.order_id)] == [
        payment.recipients[0].account_id
    ]
    statuses = {record.account_id: record.status for record in state.transfers}
    assert statuses == {payment.recipients[0].account_id: "succeeded", driver: "in_review"}

    payment_stack.emulator.control.remove_fault(failing)
    await resolve(handle, "retry")
    final = await settle(payment_stack, handle)
    assert final.status == "SETTLED" and final.split is not None
    transfers = transfers_for(payment_stack, payment.order_id)
    assert sorted((t["destination"], t["amount"]) for t in transfers) == sorted(
        (part.account_id, part.amount) for part in final.split.parts
    )
    paid = {part.account_id: part.amount for part in final.split.parts}
    fee = stripe_fee(payment_stack, str(final.stripe_charge_id))
    # Settlement booked only what stayed with the platform: both sellers' payables are zero.
    assert await postings_by_account(payment_stack, state.payment_id) == settled_postings(final.split, fee, paid)
    assert await ledger_findings(payment_stack) == []


async def test_a_recipient_whose_transfers_fail_for_a_while_is_paid_once_when_it_recovers(
    payment_stack: PaymentStack,
) -> None:
    """One connected account refuses transfers for a while: later rounds (backoff) pay it, no human needed."""
    timings = replace(FAST_TIMINGS, transfer_rounds_max=30, transfer_retry_initial_seconds=0.5)
    payment = two_recipient_order(timings=timings)
    driver = payment.recipients[1].account_id
    flaky = payment_stack.emulator.control.add_fault(
        "POST", "/v1/transfers", "error_500_before", params={"destination": driver}
    )
    state, handle = await start(payment_stack, payment)
    deadline = asyncio.get_running_loop().time() + 30
    while (await handle.query(QUERY_STATE, result_type=PaymentState)).transfer_rounds < 2:
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.2)
    payment_stack.emulator.control.remove_fault(flaky)
    final = await settle(payment_stack, handle)
    assert final.status == "SETTLED" and final.split is not None
    transfers = transfers_for(payment_stack, payment.order_id)
    assert sorted((t["destination"], t["amount"]) for t in transfers) == sorted(
        (part.account_id, part.amount) for part in final.split.parts
    )
    assert await review_items(payment_stack, state.payment_id) == []
    assert final.transfer_rounds == 0 and final.transfer_next_round_unix_seconds is None


# ---------------------------------------------------------------------------------------- Why 4 and 10


async def test_why4_transfer_answered_500_after_commit_is_looked_up_not_repeated(payment_stack: PaymentStack) -> None:
    payment_stack.emulator.control.add_fault("POST", "/v1/transfers", "error_500_after", count=1)
    payment = two_recipient_order()
    state, handle = await start(payment_stack, payment)
    final = await settle(payment_stack, handle)
    assert final.status == "SETTLED" and final.split is not None
    transfers = transfers_for(payment_stack, payment.order_id)
    assert len(transfers) == 2, "each recipient is paid exactly once"
    assert {record.account_id: record.transfer_id for record in final.transfers} == {
        transfer["destination"]: transfer["id"] for transfer in transfers
    }
    async with payment_stack.engine.connect() as connection:
        booked = set(
            (
                await connection.execute(
                    text(
                        "SELECT metadata->>'transfer_id' FROM ledger.entries "
                        "WHERE metadata->>'payment_id' = :id AND metadata ? 'transfer_id'"
                    ),
                    {"id": state.payment_id},
                )
            ).scalars()
        )
    assert booked == {transfer["id"] for transfer in transfers}
    assert await review_items(payment_stack, state.payment_id) == []


async def test_why10_capture_answered_500_after_commit_is_captured_once(payment_stack: PaymentStack) -> None:
    payment_stack.emulator.control.add_fault("POST", "/v1/payment_intents/*/capture", "error_500_after", count=1)
    payment = two_recipient_order(capture_method="manual")
    state, handle = await start(payment_stack, payment)
    assert state.status == "AUTHORIZED"
    started = asyncio.get_running_loop().time()
    captured = await handle.execute_update(UPDATE_CAPTURE, CaptureRequest(amount=6000), result_type=PaymentState)
    assert captured.status == "CAPTURED" and captured.amount_captured == 6000
    assert asyncio.get_running_loop().time() - started < 30, "the capture is looked up, not retried for minutes"
    [intent] = intents_for(payment_stack, payment.order_id)
    assert (intent["status"], intent["amount_received"]) == ("succeeded", 6000)
    final = await settle(payment_stack, handle)
    assert final.status == "SETTLED"
    assert sum(t["amount"] for t in transfers_for(payment_stack, payment.order_id)) == sum(
        record.amount for record in final.transfers
    )
    assert await review_items(payment_stack, state.payment_id) == []
    assert await ledger_findings(payment_stack) == []


async def test_why10_transfer_created_webhook_records_a_transfer_penny_could_not_see(
    payment_stack: PaymentStack,
) -> None:
    """The transfer committed but its answer and every lookup failed: review. Stripe's webhook then tells Penny."""
    payment = two_recipient_order()
    payment_stack.emulator.control.add_fault("POST", "/v1/transfers", "error_500_after")
    blind = payment_stack.emulator.control.add_fault("GET", "/v1/transfers", "error_500_before")
    state, handle = await start(payment_stack, payment)
    state = await wait_for_status(handle, "NEEDS_REVIEW")
    transfers = transfers_for(payment_stack, payment.order_id)
    assert {t["destination"] for t in transfers} == {r.account_id for r in payment.recipients}
    assert all(record.transfer_id is None for record in state.transfers)

    payment_stack.emulator.control.clear_faults()
    for transfer in transfers:
        await handle.signal(
            SIGNAL_STRIPE_EVENT,
            StripeEventSignal(
                event_id=f"evt_{uuid.uuid4().hex[:16]}",
                type="transfer.created",
                created=0,
                object_id=transfer["id"],
                object_type="transfer",
                amount=transfer["amount"],
                data={"transfer_group": payment.order_id},
            ),
        )
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        state = await handle.query(QUERY_STATE, result_type=PaymentState)
        if all(record.booked for record in state.transfers):
            break
        assert asyncio.get_running_loop().time() < deadline, state.history
        await asyncio.sleep(0.2)
    assert {r.account_id: r.transfer_id for r in state.transfers} == {t["destination"]: t["id"] for t in transfers}
    _ = blind
    await resolve(handle, "retry")
    final = await settle(payment_stack, handle)
    assert final.status == "SETTLED"
    assert len(transfers_for(payment_stack, payment.order_id)) == 2, "no recipient is paid twice"
    assert await ledger_findings(payment_stack) == []


# ---------------------------------------------------------------------------------------- Why 5


async def test_why5_resolution_is_checked_against_stripe_and_never_backwards(payment_stack: PaymentStack) -> None:
    down = payment_stack.emulator.control.add_fault("GET", "/v1/charges/*", "error_500_before")
    payment = two_recipient_order()
    state, handle = await start(payment_stack, payment)
    await wait_for_status(handle, "NEEDS_REVIEW")
    for resolution in ("authorized", "failed", "canceled"):
        with pytest.raises(WorkflowUpdateFailedError) as refused:
            await resolve(handle, resolution)
        assert "Stripe says succeeded" in str(refused.value.cause) or "back from" in str(refused.value.cause)
    still = await handle.query(QUERY_STATE, result_type=PaymentState)
    assert still.status == "NEEDS_REVIEW"
    [item] = await review_items(payment_stack, state.payment_id)
    assert item.status == "open"
    payment_stack.emulator.control.remove_fault(down)
    resolved = await resolve(handle, "captured", note="Stripe shows the charge")
    assert resolved.status == "CAPTURED"
    final = await settle(payment_stack, handle)
    assert final.status == "SETTLED"
    assert len(transfers_for(payment_stack, payment.order_id)) == 2


async def test_why5_captured_resolution_books_the_capture_like_the_normal_path(payment_stack: PaymentStack) -> None:
    """Create answered 500 after commit and every lookup failed: review from PROCESSING.
    The operator's "captured" is allowed only because Stripe says succeeded, and books the capture."""
    payment = two_recipient_order()
    payment_stack.emulator.control.add_fault("POST", "/v1/payment_intents", "error_500_after", count=1)
    blind = payment_stack.emulator.control.add_fault("GET", "/v1/payment_intents/search", "error_500_before")
    state, handle = await start(payment_stack, payment)
    state = await wait_for_status(handle, "NEEDS_REVIEW")
    assert await postings_by_account(payment_stack, state.payment_id) == {}
    with pytest.raises(WorkflowUpdateFailedError) as unavailable:
        await resolve(handle, "captured")
    assert "nothing changed" in str(unavailable.value.cause)
    payment_stack.emulator.control.remove_fault(blind)
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await resolve(handle, "failed")
    assert "Stripe says succeeded" in str(refused.value.cause)
    resolved = await resolve(handle, "captured")
    assert resolved.status == "CAPTURED" and resolved.amount_captured == 10_000
    row = await payment_row(payment_stack, state.payment_id)
    assert row.amount_captured == 10_000
    final = await settle(payment_stack, handle)
    assert final.status == "SETTLED" and final.split is not None
    [intent] = intents_for(payment_stack, payment.order_id)
    paid = paid_by_destination(payment_stack, payment.order_id)
    assert paid == {part.account_id: part.amount for part in final.split.parts}
    fee = stripe_fee(payment_stack, intent["latest_charge"])
    assert await postings_by_account(payment_stack, state.payment_id) == settled_postings(final.split, fee, paid)
    [item] = await review_items(payment_stack, state.payment_id)
    assert (item.status, item.resolution, item.resolved_by) == ("resolved", "captured", "operator:olga")


# ---------------------------------------------------------------------------------------- Why 6


async def test_why6_one_outbox_event_per_status_change(payment_stack: PaymentStack) -> None:
    payment = two_recipient_order()
    state, handle = await start(payment_stack, payment)
    await settle(payment_stack, handle)
    assert await outbox_topics(payment_stack, state.payment_id) == [
        "payment.created",
        "payment.captured",
        "payment.settled",
    ]
    async with payment_stack.engine.connect() as connection:
        payload = (
            await connection.execute(
                text("SELECT payload FROM outbox WHERE aggregate_id = :id AND topic = 'payment.captured'"),
                {"id": state.payment_id},
            )
        ).scalar_one()
    assert payload["type"] == "payment.captured" and payload["version"] == 1
    assert (payload["previous_status"], payload["status"], payload["amount_captured"]) == (
        "CREATED",
        "CAPTURED",
        10_000,
    )


# ---------------------------------------------------------------------------------------- Why 7


async def test_why7_cancel_for_another_reason_uses_its_own_key(payment_stack: PaymentStack) -> None:
    """The merchant's cancel fails (Stripe saved a 500 under its key); later the expiry cancel must not reuse it."""
    payment = new_order(capture_method="manual", timings=replace(FAST_TIMINGS, authorization_expiry_seconds=8))
    state, handle = await start(payment_stack, payment)
    failing = payment_stack.emulator.control.add_fault("POST", "/v1/payment_intents/*/cancel", "error_500_before")
    after = await handle.execute_update(UPDATE_CANCEL, CancelRequest(), result_type=PaymentState)
    assert after.status == "NEEDS_REVIEW"
    payment_stack.emulator.control.remove_fault(failing)
    resumed = await resolve(handle, "retry")
    assert resumed.status == "AUTHORIZED"  # Stripe still holds the authorisation
    final = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT_SECONDS)
    assert final.status == "CANCELED"
    [intent] = intents_for(payment_stack, payment.order_id)
    assert (intent["status"], intent["cancellation_reason"]) == ("canceled", "abandoned")
    assert await postings_by_account(payment_stack, state.payment_id) == {}


# ---------------------------------------------------------------------------------------- Why 8


async def test_why8_continue_as_new_keeps_the_authorization_deadline(payment_stack: PaymentStack) -> None:
    timings = replace(FAST_TIMINGS, authorization_expiry_seconds=12, continue_as_new_history_length_max=40)
    payment = new_order(capture_method="manual", timings=timings)
    state, handle = await start(payment_stack, payment)
    first_run = (await handle.describe()).run_id
    await asyncio.sleep(0.5)
    before = await handle.query(QUERY_STATE, result_type=PaymentState)
    deadline = before.authorization_deadline_unix_seconds
    assert deadline is not None
    # Events that change nothing still grow the history past the threshold.
    for _ in range(8):
        await handle.signal(
            SIGNAL_STRIPE_EVENT,
            StripeEventSignal(
                event_id=f"evt_{uuid.uuid4().hex[:16]}",
                type="charge.updated",
                created=0,
                object_id="ch_x",
                object_type="charge",
            ),
        )
    for _ in range(100):
        described = await handle.describe()
        if described.run_id != first_run:
            break
        await asyncio.sleep(0.1)
    carried = await handle.query(QUERY_STATE, result_type=PaymentState)
    assert carried.continued_as_new >= 1, "the workflow must have continued as new"
    assert carried.status == "AUTHORIZED"
    assert carried.authorization_deadline_unix_seconds == deadline
    final = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT_SECONDS)
    assert final.status == "CANCELED"
    async with payment_stack.engine.connect() as connection:
        canceled_at: dict[str, float] = dict(
            (
                await connection.execute(
                    text(
                        "SELECT to_status, extract(epoch FROM created_at) FROM payment_events "
                        "WHERE payment_id = :id AND to_status = 'CANCELED' AND from_status = 'AUTHORIZED'"
                    ),
                    {"id": state.payment_id},
                )
            ).all()
        )
    # The hold expired at the original deadline, not one expiry period after the new run began.
    assert float(canceled_at["CANCELED"]) <= deadline + 3


# ---------------------------------------------------------------------------------------- Why 9


async def test_why9_two_charged_payment_intents_for_one_order_open_a_review(payment_stack: PaymentStack) -> None:
    import stripe

    payment = new_order()
    state, handle = await start(payment_stack, payment)
    assert state.status == "CAPTURED"
    client = stripe.StripeClient("sk_test_penny", base_addresses={"api": payment_stack.emulator.base_url})
    duplicate = client.v1.payment_intents.create(
        {
            "amount": payment.amount,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "metadata": {"order_id": payment.order_id},
        }
    )
    counted = REGISTRY.get_sample_value("penny_duplicate_charges_total") or 0.0
    await handle.signal(
        SIGNAL_STRIPE_EVENT,
        StripeEventSignal(
            event_id=f"evt_{uuid.uuid4().hex[:16]}",
            type="payment_intent.succeeded",
            created=0,
            object_id=duplicate["id"],
            object_type="payment_intent",
            status="succeeded",
        ),
    )
    state = await wait_for_status(handle, "NEEDS_REVIEW")
    items = await review_items(payment_stack, state.payment_id)
    assert [item.kind for item in items] == ["duplicate_charge"]
    assert duplicate["id"] in items[0].reason
    assert REGISTRY.get_sample_value("penny_duplicate_charges_total") == counted + 1


async def test_why9_unknown_payment_intent_status_goes_to_review_after_named_polls(payment_stack: PaymentStack) -> None:
    timings = replace(FAST_TIMINGS, unknown_status_polls_max=3)
    payment = new_order(payment_method="pm_card_authenticationRequired", timings=timings)
    state, handle = await start(payment_stack, payment)
    assert state.status == "REQUIRES_ACTION" and state.stripe_payment_intent_id is not None
    payment_stack.emulator.control.override_intent_status(state.stripe_payment_intent_id, "requires_reauthorization")
    state = await wait_for_status(handle, "NEEDS_REVIEW")
    assert state.unknown_status_polls == 3
    [item] = await review_items(payment_stack, state.payment_id)
    assert item.kind == "unknown_status" and "requires_reauthorization" in item.reason
    assert item.details["status_before"] == "REQUIRES_ACTION"
    assert await running(handle)
    # Stripe's real status comes back; the operator resumes and the customer can still finish.
    payment_stack.emulator.control.override_intent_status(state.stripe_payment_intent_id, "reset")
    assert (await resolve(handle, "retry")).status == "REQUIRES_ACTION"
    payment_stack.emulator.control.complete_action(state.stripe_payment_intent_id, "succeed")
    captured = await wait_for_status(handle, "CAPTURED", "SETTLED")
    assert captured.amount_captured == payment.amount


# ---------------------------------------------------------------------------------------- disputes


async def dispute_of(stack: PaymentStack, intent_id: str | None) -> dict[str, Any]:
    """The PaymentIntent's dispute (pm_card_createDispute: it appears about a second after the charge)."""
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        disputes = [
            d for d in stack.emulator.control.state(["disputes"])["disputes"] if d["payment_intent"] == intent_id
        ]
        if disputes:
            [dispute] = disputes
            return dispute
        assert asyncio.get_running_loop().time() < deadline, "the emulator opened no dispute"
        await asyncio.sleep(0.2)


async def signal_dispute(handle: WorkflowHandle[Any, Any], dispute: dict[str, Any], event_type: str) -> None:
    """A dispute webhook as the intake builds it (the workflow re-fetches the dispute, so the payload is minimal)."""
    await handle.signal(
        SIGNAL_STRIPE_EVENT,
        StripeEventSignal(
            event_id=f"evt_{uuid.uuid4().hex[:16]}",
            type=event_type,
            created=0,
            object_id=dispute["id"],
            object_type="dispute",
        ),
    )


async def test_dispute_right_after_capture_still_pays_recipients_and_a_lost_dispute_is_booked(
    payment_stack: PaymentStack,
) -> None:
    payment = two_recipient_order(payment_method="pm_card_createDispute")
    state, handle = await start(payment_stack, payment)
    dispute = await dispute_of(payment_stack, state.stripe_payment_intent_id)
    await signal_dispute(handle, dispute, "charge.dispute.created")
    disputed = await wait_for_status(handle, "DISPUTED")
    assert disputed.split is not None
    deadline = asyncio.get_running_loop().time() + 30
    while len(transfers_for(payment_stack, payment.order_id)) < 2:
        assert asyncio.get_running_loop().time() < deadline, "recipients of a disputed payment are still paid"
        await asyncio.sleep(0.2)
    payment_stack.emulator.control.close_dispute(dispute["id"], "lost")
    await signal_dispute(handle, dispute, "charge.dispute.closed")
    final = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT_SECONDS)
    assert final.status == "REVERSED" and final.split is not None
    paid = paid_by_destination(payment_stack, payment.order_id)
    assert paid == {part.account_id: part.amount for part in final.split.parts}
    stripe_fee_amount = stripe_fee(payment_stack, str(final.stripe_charge_id))
    dispute_fee = sum(bt["fee"] for bt in dispute["balance_transactions"])
    assert dispute_fee > 0
    expected = {
        "stripe:pending:usd": 10_000 - stripe_fee_amount - sum(paid.values()) - 10_000 - dispute_fee,
        "platform:fees:usd": -final.split.platform_fee,
        "tax:payable:usd": -final.split.tax,
        "platform:processing_fees:usd": stripe_fee_amount,
        "platform:disputes:usd": 10_000 + dispute_fee,
    }
    assert await postings_by_account(payment_stack, state.payment_id) == expected
    assert await ledger_findings(payment_stack) == []


async def test_dispute_events_out_of_order_book_once_and_a_won_dispute_settles(payment_stack: PaymentStack) -> None:
    payment = new_order(payment_method="pm_card_createDispute")
    state, handle = await start(payment_stack, payment)
    dispute = await dispute_of(payment_stack, state.stripe_payment_intent_id)
    payment_stack.emulator.control.close_dispute(dispute["id"], "won")
    # The closing event arrives first, then the opening one, then the closing one again.
    await signal_dispute(handle, dispute, "charge.dispute.closed")
    await wait_for_status(handle, "SETTLED")
    await signal_dispute(handle, dispute, "charge.dispute.created")
    await signal_dispute(handle, dispute, "charge.dispute.closed")
    final = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT_SECONDS)
    assert final.status == "SETTLED"
    assert final.disputes == {dispute["id"]: "won"}
    dispute_fee = sum(bt["fee"] for bt in dispute["balance_transactions"])
    postings = await postings_by_account(payment_stack, state.payment_id)
    assert postings["platform:disputes:usd"] == dispute_fee  # the fee stays an expense; the amount came back
    assert "stripe:disputed:usd" not in postings
    async with payment_stack.engine.connect() as connection:
        keys = (
            (
                await connection.execute(
                    text("SELECT idempotency_key FROM ledger.entries WHERE metadata->>'dispute_id' = :id ORDER BY id"),
                    {"id": dispute["id"]},
                )
            )
            .scalars()
            .all()
        )
    assert [key.rsplit(":", 1)[1] for key in keys] == ["opened", "won"]


async def test_dispute_lost_before_the_first_step_after_capture_still_books_the_destination_charge(
    payment_stack: PaymentStack,
) -> None:
    """Found by `penny chaos` (seed 7): the create's answer is lost (timeout after commit), the dispute
    opens and is lost at Stripe meanwhile, and both events are queued before the payment's first step
    after capture. The payment ends REVERSED; the seller's destination transfer, made by Stripe with
    the charge, must still be in the ledger."""
    payment_stack.emulator.control.add_fault("POST", "/v1/payment_intents", "timeout_after", count=1, latency_seconds=6)
    payment = new_order(payment_method="pm_card_createDispute")
    starting = asyncio.create_task(start(payment_stack, payment))
    deadline = asyncio.get_running_loop().time() + 20
    while not (intents := intents_for(payment_stack, payment.order_id)):
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.1)
    dispute = await dispute_of(payment_stack, intents[0]["id"])
    payment_stack.emulator.control.close_dispute(dispute["id"], "lost")
    handle = payment_stack.client.get_workflow_handle(f"payment-{payment.order_id}", result_type=PaymentState)
    await signal_dispute(handle, dispute, "charge.dispute.created")
    await signal_dispute(handle, dispute, "charge.dispute.closed")
    await starting
    final = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT_SECONDS)
    assert final.status == "REVERSED" and final.split is not None
    [transfer] = transfers_for(payment_stack, payment.order_id)  # Stripe's destination transfer
    seller = payment.recipients[0].account_id
    assert transfer["destination"] == seller
    postings = await postings_by_account(payment_stack, final.payment_id)
    assert f"seller:{seller}:payable:usd" not in postings, "the seller's share was owed and then paid"
    assert [(record.account_id, record.booked) for record in final.transfers] == [(seller, True)]
    assert postings["platform:disputes:usd"] == 9999 + sum(bt["fee"] for bt in dispute["balance_transactions"])


# ---------------------------------------------------------------------------------------- Why 11


async def test_why11_payment_ids_never_look_like_card_numbers(payment_stack: PaymentStack) -> None:
    payment = new_order()
    state, _handle = await start(payment_stack, payment)
    assert PAYMENT_ID_PATTERN.match(state.payment_id)
    assert not any(character.isdigit() for character in state.payment_id)
    trail = await audit_trail(payment_stack, state.payment_id)
    assert trail[0][1] == "CREATED"
