"""PaymentWorkflow end to end: real Temporal dev server, real Postgres, the Stripe emulator over HTTP."""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import text
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError
from temporalio.service import RPCError

from activities.payments import RISK_REVIEW_AMOUNT_MINOR
from api.workflow_client import start_payment
from ledger import ledger as books
from tests.payment_fixtures import FAST_TIMINGS, PaymentStack
from workflows.payment_models import (
    PAYMENT_WORKFLOW_NAME,
    QUERY_STATE,
    SIGNAL_STRIPE_EVENT,
    UPDATE_CANCEL,
    UPDATE_CAPTURE,
    CancelRequest,
    CaptureRequest,
    PaymentInput,
    PaymentState,
    SplitRecipientSpec,
    StripeEventSignal,
    workflow_id_for_order,
)

RESULT_TIMEOUT_SECONDS = 60


def new_order(**overrides: Any) -> PaymentInput:
    order_id = f"order_{uuid.uuid4().hex[:12]}"
    base = PaymentInput(
        order_id=order_id,
        amount=9999,
        currency="USD",
        customer="cus_alice",
        payment_method="pm_card_visa",
        recipients=[SplitRecipientSpec(account_id=f"acct_{uuid.uuid4().hex[:10]}", share_bps=10_000)],
        platform_fee_bps=1000,
        timings=FAST_TIMINGS,
    )
    return replace(base, **overrides)


async def start(stack: PaymentStack, payment: PaymentInput) -> tuple[PaymentState, WorkflowHandle[Any, Any]]:
    """Start (or attach to) the order's workflow and wait for its first milestone, exactly as the API does."""
    state = await start_payment(stack.client, stack.settings, payment)
    return state, stack.client.get_workflow_handle(workflow_id_for_order(payment.order_id), result_type=PaymentState)


async def wait_for_status(handle: WorkflowHandle[Any, Any], *statuses: str, timeout: float = 30) -> PaymentState:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state: PaymentState = await handle.query(QUERY_STATE, result_type=PaymentState)
        if state.status in statuses:
            return state
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"payment stuck in {state.status}; history: {state.history}")
        await asyncio.sleep(0.2)


def intents_for(stack: PaymentStack, order_id: str) -> list[dict[str, Any]]:
    return [
        intent
        for intent in stack.emulator.control.payment_intents()
        if (intent.get("metadata") or {}).get("order_id") == order_id
    ]


async def payment_row(stack: PaymentStack, payment_id: str) -> Any:
    async with stack.engine.connect() as connection:
        return (await connection.execute(text("SELECT * FROM payments WHERE id = :id"), {"id": payment_id})).one()


async def audit_trail(stack: PaymentStack, payment_id: str) -> list[tuple[str | None, str, str]]:
    async with stack.engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT from_status, to_status, event FROM payment_events WHERE payment_id = :id ORDER BY id"),
            {"id": payment_id},
        )
        return [(row.from_status, row.to_status, row.event) for row in rows]


async def balance(stack: PaymentStack, account: str) -> int:
    async with stack.engine.connect() as connection:
        return (await books.balance(connection, account)).posted


async def ledger_findings(stack: PaymentStack) -> list[Any]:
    async with stack.engine.connect() as connection:
        return list(await books.verify(connection))


async def settle(stack: PaymentStack, handle: WorkflowHandle[Any, Any]) -> PaymentState:
    """Advance the emulator's clock past the settlement delay and wait for the workflow to finish."""
    stack.emulator.control.advance_clock(3 * 24 * 3600)
    return await asyncio.wait_for(handle.result(), RESULT_TIMEOUT_SECONDS)  # type: ignore[no-any-return]


async def test_automatic_capture_single_seller_books_exact_split(payment_stack: PaymentStack) -> None:
    payment = new_order()
    seller = payment.recipients[0].account_id
    state, handle = await start(payment_stack, payment)
    assert state.status == "CAPTURED"
    assert state.split is not None
    assert (state.split.platform_fee, state.split.parts[0].amount) == (1000, 8999)

    final = await settle(payment_stack, handle)
    assert final.status == "SETTLED"
    [intent] = intents_for(payment_stack, payment.order_id)
    assert intent["status"] == "succeeded" and intent["amount_received"] == 9999
    assert intent["application_fee_amount"] == 1000
    assert await balance(payment_stack, "platform:fees:usd") >= 1000
    row = await payment_row(payment_stack, state.payment_id)
    assert (row.status, row.amount_captured, row.stripe_payment_intent_id) == ("SETTLED", 9999, intent["id"])
    trail = await audit_trail(payment_stack, state.payment_id)
    assert [to for _, to, event in trail if not event.startswith("book:")] == [
        "CREATED",
        "CREATED",
        "CAPTURED",
        "SETTLED",
    ]
    assert await ledger_findings(payment_stack) == []
    _ = seller


async def test_seller_driver_and_tax_get_exact_transfers(payment_stack: PaymentStack) -> None:
    seller, driver = f"acct_s{uuid.uuid4().hex[:8]}", f"acct_d{uuid.uuid4().hex[:8]}"
    payment = new_order(
        amount=4999,
        recipients=[
            SplitRecipientSpec(seller, share_bps=7000, role="seller"),
            SplitRecipientSpec(driver, share_bps=3000, role="driver"),
        ],
        platform_fee_bps=1000,
        tax_amount=400,
    )
    state, handle = await start(payment_stack, payment)
    assert state.status == "CAPTURED"
    final = await settle(payment_stack, handle)
    assert final.status == "SETTLED"
    split = final.split
    assert split is not None
    assert split.platform_fee + split.tax + sum(part.amount for part in split.parts) == 4999
    transfers = {
        transfer["destination"]: transfer["amount"]
        for transfer in payment_stack.emulator.control.state()["transfers"]
        if transfer.get("transfer_group") == payment.order_id
    }
    assert transfers == {part.account_id: part.amount for part in split.parts}
    assert [record.status for record in final.transfers] == ["succeeded", "succeeded"]
    assert await ledger_findings(payment_stack) == []


async def test_manual_partial_capture_releases_the_rest(payment_stack: PaymentStack) -> None:
    payment = new_order(capture_method="manual", amount=10_000)
    state, handle = await start(payment_stack, payment)
    assert state.status == "AUTHORIZED" and state.amount_capturable == 10_000

    captured: PaymentState = await handle.execute_update(
        UPDATE_CAPTURE, CaptureRequest(amount=6000), result_type=PaymentState
    )
    assert captured.status == "CAPTURED" and captured.amount_captured == 6000
    [intent] = intents_for(payment_stack, payment.order_id)
    assert intent["amount_received"] == 6000
    final = await settle(payment_stack, handle)
    assert final.status == "SETTLED"
    assert sum(record.amount for record in final.transfers) + 600 == 6000
    assert await ledger_findings(payment_stack) == []


async def test_capture_more_than_authorized_is_refused(payment_stack: PaymentStack) -> None:
    payment = new_order(capture_method="manual", amount=5000)
    state, handle = await start(payment_stack, payment)
    assert state.status == "AUTHORIZED"
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await handle.execute_update(UPDATE_CAPTURE, CaptureRequest(amount=5001), result_type=PaymentState)
    assert "between 1 and 5000" in str(refused.value.cause)
    still = await handle.query(QUERY_STATE, result_type=PaymentState)
    assert still.status == "AUTHORIZED"


async def test_cancel_releases_the_hold(payment_stack: PaymentStack) -> None:
    payment = new_order(capture_method="manual")
    state, handle = await start(payment_stack, payment)
    canceled: PaymentState = await handle.execute_update(UPDATE_CANCEL, CancelRequest(), result_type=PaymentState)
    assert canceled.status == "CANCELED"
    final = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT_SECONDS)
    assert final.status == "CANCELED"
    [intent] = intents_for(payment_stack, payment.order_id)
    assert intent["status"] == "canceled"
    # The workflow has ended: a late capture finds no running payment to capture.
    with pytest.raises((WorkflowUpdateFailedError, RPCError)):
        await handle.execute_update(UPDATE_CAPTURE, CaptureRequest(), result_type=PaymentState)
    assert await ledger_findings(payment_stack) == []


async def test_declined_card_fails_without_retrying(payment_stack: PaymentStack) -> None:
    payment = new_order(payment_method="pm_card_chargeDeclinedInsufficientFunds")
    state, handle = await start(payment_stack, payment)
    assert state.status == "FAILED"
    assert state.failure_code == "insufficient_funds"
    final = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT_SECONDS)
    assert final.status == "FAILED"
    row = await payment_row(payment_stack, state.payment_id)
    assert (row.status, row.failure_code, row.amount_captured) == ("FAILED", "insufficient_funds", 0)


async def test_requires_action_completed_by_the_customer(payment_stack: PaymentStack) -> None:
    payment = new_order(payment_method="pm_card_authenticationRequired")
    state, handle = await start(payment_stack, payment)
    assert state.status == "REQUIRES_ACTION"
    payment_stack.emulator.control.complete_action(state.stripe_payment_intent_id, "succeed")
    captured = await wait_for_status(handle, "CAPTURED", "SETTLED")
    assert captured.amount_captured == payment.amount


async def test_requires_action_abandoned_is_canceled(payment_stack: PaymentStack) -> None:
    timings = replace(FAST_TIMINGS, requires_action_timeout_seconds=2)
    payment = new_order(payment_method="pm_card_authenticationRequired", timings=timings)
    state, handle = await start(payment_stack, payment)
    assert state.status == "REQUIRES_ACTION"
    final = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT_SECONDS)
    assert final.status == "CANCELED"
    [intent] = intents_for(payment_stack, payment.order_id)
    assert intent["status"] == "canceled"


async def test_timeout_after_commit_charges_exactly_once(payment_stack: PaymentStack) -> None:
    """The seed's bug: Stripe commits the PaymentIntent, the response never arrives, the call is retried."""
    payment_stack.emulator.control.add_fault("POST", "/v1/payment_intents", "timeout_after", count=1, latency_seconds=1)
    payment = new_order()
    state, handle = await start(payment_stack, payment)
    state = await wait_for_status(handle, "CAPTURED", "SETTLED")
    intents = intents_for(payment_stack, payment.order_id)
    assert len(intents) == 1, "the customer must be charged exactly once"
    assert intents[0]["status"] == "succeeded"
    assert state.stripe_payment_intent_id == intents[0]["id"]


async def test_500_after_commit_finds_the_payment_intent(payment_stack: PaymentStack) -> None:
    """Stripe saved a 500 for the key (it replays it); the workflow looks the PaymentIntent up by order id."""
    payment_stack.emulator.control.add_fault("POST", "/v1/payment_intents", "error_500_after", count=1)
    payment = new_order()
    state, handle = await start(payment_stack, payment)
    state = await wait_for_status(handle, "CAPTURED", "SETTLED")
    intents = intents_for(payment_stack, payment.order_id)
    assert len(intents) == 1 and intents[0]["status"] == "succeeded"
    trail = await audit_trail(payment_stack, state.payment_id)
    assert ("CREATED", "PROCESSING", "processing") in trail


async def test_processor_down_ends_in_review_not_failed(payment_stack: PaymentStack) -> None:
    payment_stack.emulator.control.add_fault("POST", "/v1/payment_intents", "error_500_before")
    payment = new_order()
    state, handle = await start(payment_stack, payment)
    state = await wait_for_status(handle, "NEEDS_REVIEW", timeout=45)
    assert intents_for(payment_stack, payment.order_id) == []
    async with payment_stack.engine.connect() as connection:
        item = (
            await connection.execute(
                text("SELECT kind, reason, status FROM review_items WHERE payment_id = :id"), {"id": state.payment_id}
            )
        ).one()
    assert item.kind == "processor_uncertain" and item.status == "open"
    assert "no PaymentIntent found" in item.reason


async def test_same_order_started_twice_is_one_payment(payment_stack: PaymentStack) -> None:
    payment = new_order()
    first, second = await asyncio.gather(start(payment_stack, payment), start(payment_stack, payment))
    assert first[0].payment_id == second[0].payment_id
    assert len(intents_for(payment_stack, payment.order_id)) == 1


async def test_stale_and_duplicate_webhook_events_are_ignored(payment_stack: PaymentStack) -> None:
    payment = new_order()
    state, handle = await start(payment_stack, payment)
    assert state.status == "CAPTURED"
    stale = StripeEventSignal(
        event_id=f"evt_{uuid.uuid4().hex[:12]}",
        type="payment_intent.processing",
        created=0,
        object_id=state.stripe_payment_intent_id or "",
        object_type="payment_intent",
        status="processing",
    )
    await handle.signal(SIGNAL_STRIPE_EVENT, stale)
    await handle.signal(SIGNAL_STRIPE_EVENT, stale)
    await asyncio.sleep(1.5)
    async with payment_stack.engine.connect() as connection:
        ignored = (
            await connection.execute(
                text("SELECT count(*) FROM payment_events WHERE stripe_event_id = :id AND event LIKE 'ignored:%'"),
                {"id": stale.event_id},
            )
        ).scalar_one()
    assert ignored == 1
    current = await handle.query(QUERY_STATE, result_type=PaymentState)
    assert current.status in ("CAPTURED", "SETTLED")


async def test_an_intent_event_claiming_no_status_is_ignored_without_asking_stripe(payment_stack: PaymentStack) -> None:
    """payment_intent.created (requires_confirmation) arrives after the payment is captured: it
    is recorded as ignored with its reason, and Stripe is not asked (every retrieve of the
    intent would fail: nothing went to review)."""
    payment = new_order()
    state, handle = await start(payment_stack, payment)
    assert state.status == "CAPTURED" and state.stripe_payment_intent_id
    lookups = payment_stack.emulator.control.add_fault(
        "GET", f"/v1/payment_intents/{state.stripe_payment_intent_id}", "error_500_before"
    )
    try:
        created = StripeEventSignal(
            event_id=f"evt_{uuid.uuid4().hex[:12]}",
            type="payment_intent.created",
            created=0,
            object_id=state.stripe_payment_intent_id,
            object_type="payment_intent",
            status="requires_confirmation",
        )
        await handle.signal(SIGNAL_STRIPE_EVENT, created)
        deadline = asyncio.get_running_loop().time() + 10
        reasons: list[str] = []
        while not reasons and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.2)
            async with payment_stack.engine.connect() as connection:
                reasons = list(
                    (
                        await connection.execute(
                            text("SELECT reason FROM payment_events WHERE stripe_event_id = :id ORDER BY id"),
                            {"id": created.event_id},
                        )
                    ).scalars()
                )
        current = await handle.query(QUERY_STATE, result_type=PaymentState)
    finally:
        payment_stack.emulator.control.remove_fault(lookups)
    assert reasons == [f"claims no status Penny acts on (requires_confirmation): payment already {current.status}"]
    assert current.status in ("CAPTURED", "SETTLED")
    async with payment_stack.engine.connect() as connection:
        reviews = (
            await connection.execute(
                text("SELECT count(*) FROM review_items WHERE payment_id = :id"), {"id": state.payment_id}
            )
        ).scalar_one()
    assert reviews == 0


async def test_worker_restarted_mid_payment_resumes_without_duplicate(
    payment_stack: PaymentStack,
) -> None:
    """The worker dies while the PaymentIntent create is in flight; a new worker finishes the payment."""
    from worker import build_worker

    stack = payment_stack
    await stack.worker.shutdown()  # take the fixture's worker away; we run our own two
    stack.emulator.control.add_fault("POST", "/v1/payment_intents", "latency", count=1, latency_seconds=2)
    payment = new_order()
    first_worker = build_worker(stack.client, stack.engine, stack.settings, task_queue=stack.task_queue)
    first_run = asyncio.create_task(first_worker.run())
    handle = await stack.client.start_workflow(
        PAYMENT_WORKFLOW_NAME,
        payment,
        id=workflow_id_for_order(payment.order_id),
        task_queue=stack.task_queue,
        result_type=PaymentState,
    )
    await asyncio.sleep(1.0)  # the create call is now in flight inside the first worker
    await first_worker.shutdown()
    await first_run

    second_worker = build_worker(stack.client, stack.engine, stack.settings, task_queue=stack.task_queue)
    async with second_worker:
        state = await wait_for_status(handle, "CAPTURED", "SETTLED", timeout=45)
    assert len(intents_for(stack, payment.order_id)) == 1
    assert state.stripe_payment_intent_id == intents_for(stack, payment.order_id)[0]["id"]


async def test_authorization_expiry_cancels_the_hold(payment_stack: PaymentStack) -> None:
    timings = replace(FAST_TIMINGS, authorization_expiry_seconds=2)
    payment = new_order(capture_method="manual", timings=timings)
    state, handle = await start(payment_stack, payment)
    assert state.status == "AUTHORIZED"
    final = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT_SECONDS)
    assert final.status == "CANCELED"
    [intent] = intents_for(payment_stack, payment.order_id)
    assert intent["status"] == "canceled"
    async with payment_stack.engine.connect() as connection:
        hold = await books.balance(connection, f"payment:{state.payment_id}:clearing:usd")
    assert (hold.posted, hold.pending) == (0, 0), "the expired hold must be released in the ledger"
    trail = await audit_trail(payment_stack, state.payment_id)
    assert trail[-1][1:] == ("CANCELED", "canceled")


def _transfers_for(stack: PaymentStack, order_id: str) -> list[dict[str, Any]]:
    return [
        transfer
        for transfer in stack.emulator.control.state()["transfers"]
        if transfer.get("transfer_group") == order_id
    ]


def _two_recipient_order() -> PaymentInput:
    return new_order(
        amount=5000,
        recipients=[
            SplitRecipientSpec(f"acct_s{uuid.uuid4().hex[:8]}", share_bps=6000, role="seller"),
            SplitRecipientSpec(f"acct_d{uuid.uuid4().hex[:8]}", share_bps=4000, role="driver"),
        ],
    )


async def test_one_failing_transfer_neither_loses_nor_duplicates_the_others(payment_stack: PaymentStack) -> None:
    """The first transfer fails through all its retries once; the next round pays it. One transfer each."""
    attempts = FAST_TIMINGS.stripe_attempts_max
    payment_stack.emulator.control.add_fault("POST", "/v1/transfers", "error_500_before", count=attempts)
    payment = _two_recipient_order()
    state, handle = await start(payment_stack, payment)
    assert state.status == "CAPTURED"
    await wait_for_status(handle, "CAPTURED")
    settled = await settle(payment_stack, handle)
    assert settled.status == "SETTLED"
    assert [record.status for record in settled.transfers] == ["succeeded", "succeeded"]
    transfers = _transfers_for(payment_stack, payment.order_id)
    assert sorted(transfer["destination"] for transfer in transfers) == sorted(
        recipient.account_id for recipient in payment.recipients
    ), "exactly one transfer per recipient"
    assert settled.split is not None
    assert {t["destination"]: t["amount"] for t in transfers} == {p.account_id: p.amount for p in settled.split.parts}
    assert await ledger_findings(payment_stack) == []


async def test_transfers_that_keep_failing_end_in_review(payment_stack: PaymentStack) -> None:
    payment_stack.emulator.control.add_fault("POST", "/v1/transfers", "error_500_before")
    payment = _two_recipient_order()
    state, handle = await start(payment_stack, payment)
    review = await wait_for_status(handle, "NEEDS_REVIEW", timeout=60)
    assert _transfers_for(payment_stack, payment.order_id) == []
    async with payment_stack.engine.connect() as connection:
        item = (
            await connection.execute(
                text("SELECT kind, reason, details FROM review_items WHERE payment_id = :id"),
                {"id": state.payment_id},
            )
        ).one()
    assert item.kind == "transfer_failed" and "2 of 2 transfers failed" in item.reason
    assert set(item.details) >= {recipient.account_id for recipient in payment.recipients}
    assert review.amount_captured == 5000


async def test_continued_as_new_payment_resumes_from_its_carried_state(payment_stack: PaymentStack) -> None:
    """Continue-as-new carries the whole state: a new run resumes where the old one was, and
    charges nothing again (no PaymentIntent is created by the continued run)."""
    payment = new_order()
    state, handle = await start(payment_stack, payment)
    settled = await settle(payment_stack, handle)
    assert settled.status == "SETTLED"
    continued_order = replace(payment, carried_state=settled)
    continued = await payment_stack.client.execute_workflow(
        PAYMENT_WORKFLOW_NAME,
        continued_order,
        id=f"{workflow_id_for_order(payment.order_id)}-continued",
        task_queue=payment_stack.task_queue,
        result_type=PaymentState,
    )
    assert continued.status == "SETTLED" and continued.payment_id == state.payment_id
    assert continued.history[-1].endswith("dispute window closed")
    assert len(intents_for(payment_stack, payment.order_id)) == 1


async def test_blocklisted_customer_fails_before_stripe_is_called(payment_stack: PaymentStack) -> None:
    """The risk check (in prepare_payment's transaction since patch prepare-screens-v1) refuses a
    blocklisted customer: FAILED, no PaymentIntent, nothing booked."""
    customer = f"cus_blocked_{uuid.uuid4().hex[:8]}"
    async with payment_stack.engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO risk_blocklist (kind, value, reason) VALUES ('customer', :value, 'chargeback ring')"),
            {"value": customer},
        )
    payment = new_order(customer=customer)
    state, handle = await start(payment_stack, payment)
    final = await asyncio.wait_for(handle.result(), RESULT_TIMEOUT_SECONDS)
    assert (state.status, final.status, final.failure_code) == ("FAILED", "FAILED", "risk_blocked")
    assert final.failure_message == "customer is blocklisted: chargeback ring"
    assert intents_for(payment_stack, payment.order_id) == []
    trail = await audit_trail(payment_stack, state.payment_id)
    assert [step[:2] for step in trail] == [(None, "CREATED"), ("CREATED", "FAILED")]


async def test_amount_above_the_review_limit_waits_for_a_human(payment_stack: PaymentStack) -> None:
    payment = new_order(amount=RISK_REVIEW_AMOUNT_MINOR + 1)
    state, handle = await start(payment_stack, payment)
    state = await wait_for_status(handle, "NEEDS_REVIEW")
    assert intents_for(payment_stack, payment.order_id) == []
    async with payment_stack.engine.connect() as connection:
        item = (
            await connection.execute(
                text("SELECT kind, reason, status FROM review_items WHERE payment_id = :id"), {"id": state.payment_id}
            )
        ).one()
    assert (item.kind, item.status) == ("risk_review", "open")
    assert item.reason == f"risk check: amount {RISK_REVIEW_AMOUNT_MINOR + 1} above RISK_REVIEW_AMOUNT_MINOR"
