"""Refunds on the real stack: exact to the cent for every party, once at Stripe, recovered per recipient.

Each test drives the PaymentWorkflow's `refund` update (as the API does) against the emulator and
Postgres, then checks what a user would notice: the emulator's refunds and transfer reversals, the
payment's ledger postings (exact, per payment), the refunds table, the review queue.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlalchemy import text
from temporalio.client import WorkflowHandle, WorkflowUpdateFailedError

from tests.payment_fixtures import FAST_TIMINGS, PaymentStack
from tests.test_api_support import api_client, auth, error_of, new_key, payment_body
from tests.test_fault_paths import (
    dispute_of,
    postings_by_account,
    resolve,
    review_items,
    signal_dispute,
    stripe_fee,
    transfers_for,
    two_recipient_order,
)
from tests.test_payment_workflow import ledger_findings, new_order, payment_row, start, wait_for_status
from workflows.ids import REFUND_ID_PATTERN, refund_id_for_request
from workflows.payment_models import (
    QUERY_STATE,
    SIGNAL_STRIPE_EVENT,
    UPDATE_CAPTURE,
    UPDATE_REFUND,
    CaptureRequest,
    PaymentState,
    RefundRecord,
    RefundRequest,
    SplitRecipientSpec,
    StripeEventSignal,
)


def refund_request(amount: int | None = None, *, key: str | None = None, reason: str | None = None) -> RefundRequest:
    return RefundRequest(
        refund_id=refund_id_for_request("pay_test", "key_test", key or uuid.uuid4().hex), amount=amount, reason=reason
    )


async def refund(handle: WorkflowHandle[Any, Any], request: RefundRequest) -> RefundRecord:
    return await handle.execute_update(UPDATE_REFUND, request, result_type=RefundRecord)  # type: ignore[no-any-return]


async def refund_refused(handle: WorkflowHandle[Any, Any], request: RefundRequest) -> str:
    """The refusal's code (the update failed, nothing was sent)."""
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await refund(handle, request)
    cause: Any = refused.value.cause
    return str(cause.details[0]["code"])


def stripe_refunds(stack: PaymentStack, intent_id: str | None) -> list[dict[str, Any]]:
    return [r for r in stack.emulator.control.state(["refunds"])["refunds"] if r["payment_intent"] == intent_id]


def reversals_of(stack: PaymentStack, order_id: str) -> dict[str, list[int]]:
    """Transfer reversal amounts per destination account, for the order's transfers."""
    found: dict[str, list[int]] = {}
    for transfer in transfers_for(stack, order_id):
        for reversal in reversed(transfer["reversals"]["data"]):  # Stripe lists the newest first
            found.setdefault(transfer["destination"], []).append(int(reversal["amount"]))
    return found


async def refund_done(handle: WorkflowHandle[Any, Any], refund_id: str, timeout: float = 30) -> PaymentState:
    """Wait until the refund is no longer pending (Stripe confirmed it and every share is back)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state: PaymentState = await handle.query(QUERY_STATE, result_type=PaymentState)
        [record] = [item for item in state.refunds if item.refund_id == refund_id]
        if record.status != "pending":
            return state
        assert asyncio.get_running_loop().time() < deadline, f"refund stuck: {record}; {state.history[-5:]}"
        await asyncio.sleep(0.2)


async def disbursed(handle: WorkflowHandle[Any, Any], timeout: float = 30) -> PaymentState:
    """Wait until Stripe's fee and every recipient's transfer are booked (refunds are refused before)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state: PaymentState = await handle.query(QUERY_STATE, result_type=PaymentState)
        if state.fee_booked and state.transfers and all(record.booked for record in state.transfers):
            return state
        assert asyncio.get_running_loop().time() < deadline, f"not disbursed: {state.history[-5:]}"
        await asyncio.sleep(0.1)


async def refund_rows(stack: PaymentStack, payment_id: str) -> list[Any]:
    async with stack.engine.connect() as connection:
        return list(
            await connection.execute(
                text("SELECT * FROM refunds WHERE payment_id = :id ORDER BY created_at, id"), {"id": payment_id}
            )
        )


def three_way_order(**overrides: Any) -> Any:
    """Seller, driver and the platform's fee, plus tax: 10000 = fee 950 + tax 500 + seller 5985 + driver 2565."""
    return two_recipient_order(**overrides)


async def test_partial_refunds_then_the_rest_are_exact_for_every_party(payment_stack: PaymentStack) -> None:
    payment = three_way_order()
    seller, driver = (recipient.account_id for recipient in payment.recipients)
    state, handle = await start(payment_stack, payment)
    assert state.split is not None
    assert (state.split.platform_fee, state.split.tax, [p.amount for p in state.split.parts]) == (
        950,
        500,
        [5985, 2565],
    )
    await disbursed(handle)

    first = await refund(handle, refund_request(3333, reason="requested_by_customer"))
    assert first.amount == 3333
    # 3333 of 10000, largest remainder: fee 316.635, tax 166.65, seller 1994.7755, driver 854.9145.
    assert (first.platform_fee, first.tax, [(p.account_id, p.amount) for p in first.recipients]) == (
        316,
        167,
        [(seller, 1995), (driver, 855)],
    )
    state = await refund_done(handle, first.refund_id)
    assert state.status == "PARTIALLY_REFUNDED"
    assert state.amount_refunded == 3333
    rest = await refund(handle, refund_request())
    assert rest.amount == 10_000 - 3333
    assert rest.platform_fee + first.platform_fee == 950
    assert rest.tax + first.tax == 500
    assert [p.amount for p in rest.recipients] == [5985 - 1995, 2565 - 855]
    state = await refund_done(handle, rest.refund_id)
    assert state.status == "REFUNDED"

    [stripe_first, stripe_rest] = sorted(
        stripe_refunds(payment_stack, state.stripe_payment_intent_id), key=lambda item: item["created"]
    )
    assert [stripe_first["amount"], stripe_rest["amount"]] == [3333, 6667]
    assert stripe_first["metadata"]["refund_id"] == first.refund_id
    assert reversals_of(payment_stack, payment.order_id) == {seller: [1995, 3990], driver: [855, 1710]}
    fee = stripe_fee(payment_stack, str(state.stripe_charge_id))
    # Every party gave back all it had; the platform is left with Stripe's fee as its only cost.
    assert await postings_by_account(payment_stack, state.payment_id) == {
        "stripe:pending:usd": -fee,
        "platform:processing_fees:usd": fee,
    }
    row = await payment_row(payment_stack, state.payment_id)
    assert (row.status, row.amount_refunded) == ("REFUNDED", 10_000)
    rows = await refund_rows(payment_stack, state.payment_id)
    assert [(r.id, r.amount, r.status) for r in rows] == [
        (first.refund_id, 3333, "succeeded"),
        (rest.refund_id, 6667, "succeeded"),
    ]
    assert all(item["booked"] and item["reversal_id"] for r in rows for item in r.recoveries)
    assert await ledger_findings(payment_stack) == []


async def test_same_refund_retried_makes_one_refund_and_over_refund_is_refused(payment_stack: PaymentStack) -> None:
    state, handle = await start(payment_stack, new_order())
    await disbursed(handle)
    request = refund_request(1000, key="same-key")
    first, again = await refund(handle, request), await refund(handle, request)
    assert first.refund_id == again.refund_id
    assert len(stripe_refunds(payment_stack, state.stripe_payment_intent_id)) == 1
    assert await refund_refused(handle, refund_request(9000)) == "amount_too_large"
    assert len(stripe_refunds(payment_stack, state.stripe_payment_intent_id)) == 1
    await refund_done(handle, first.refund_id)
    assert await refund_refused(handle, refund_request(0)) == "parameter_invalid_integer"
    assert await ledger_findings(payment_stack) == []


async def test_concurrent_refunds_for_the_last_amount_exactly_one_succeeds(payment_stack: PaymentStack) -> None:
    state, handle = await start(payment_stack, new_order())
    await disbursed(handle)
    outcomes = await asyncio.gather(*(refund(handle, refund_request(6000)) for _ in range(4)), return_exceptions=True)
    made = [outcome for outcome in outcomes if isinstance(outcome, RefundRecord)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, WorkflowUpdateFailedError)]
    assert (len(made), len(refused)) == (1, 3), outcomes
    assert [r["amount"] for r in stripe_refunds(payment_stack, state.stripe_payment_intent_id)] == [6000]
    final = await refund_done(handle, made[0].refund_id)
    assert (final.status, final.amount_refunded) == ("PARTIALLY_REFUNDED", 6000)
    assert await ledger_findings(payment_stack) == []


async def test_refund_of_an_uncaptured_payment_is_refused_and_suggests_cancel(payment_stack: PaymentStack) -> None:
    state, handle = await start(payment_stack, new_order(capture_method="manual"))
    assert state.status == "AUTHORIZED"
    with pytest.raises(WorkflowUpdateFailedError) as refused:
        await refund(handle, refund_request())
    cause: Any = refused.value.cause
    assert cause.details[0]["code"] == "payment_not_captured"
    assert "cancel" in cause.message
    assert stripe_refunds(payment_stack, state.stripe_payment_intent_id) == []


async def test_refund_failed_at_stripe_books_the_money_back_and_goes_to_review(payment_stack: PaymentStack) -> None:
    seller = f"acct_{uuid.uuid4().hex[:10]}"
    payment = new_order(
        payment_method="pm_card_refundFail",
        recipients=[SplitRecipientSpec(seller, share_bps=10_000)],
        capture_method="manual",
    )
    state, handle = await start(payment_stack, payment)
    await handle.execute_update(UPDATE_CAPTURE, CaptureRequest(), result_type=PaymentState)
    await disbursed(handle)
    before = await postings_by_account(payment_stack, state.payment_id)
    made = await refund(handle, refund_request(4000))
    state = await refund_done(handle, made.refund_id)
    assert state.status == "PARTIALLY_REFUNDED"
    assert reversals_of(payment_stack, payment.order_id) == {seller: [3600]}
    [stripe_refund] = stripe_refunds(payment_stack, state.stripe_payment_intent_id)
    payment_stack.emulator.control.fail_refund(stripe_refund["id"])
    await handle.signal(
        SIGNAL_STRIPE_EVENT,
        StripeEventSignal(
            event_id=f"evt_{uuid.uuid4().hex[:16]}",
            type="refund.failed",
            created=0,
            object_id=stripe_refund["id"],
            object_type="refund",
        ),
    )
    state = await wait_for_status(handle, "NEEDS_REVIEW")
    [item] = await review_items(payment_stack, state.payment_id)
    assert item.kind == "refund_failed"
    assert item.details["refund"] == made.refund_id and item.details["stripe_refund"] == stripe_refund["id"]
    assert f"{seller} 3600" in item.details["resume"]
    [record] = state.refunds
    assert (record.status, state.amount_refunded) == ("failed", 0)
    after = await postings_by_account(payment_stack, state.payment_id)
    # The buyer got nothing back; the platform's fee is its own again; the seller, whose 3600 was
    # pulled back, is owed it again.
    changed = {account: after.get(account, 0) - before.get(account, 0) for account in {*before, *after}}
    assert {account: amount for account, amount in changed.items() if amount} == {
        f"seller:{seller}:payable:usd": -3600,
        "stripe:pending:usd": 3600,
    }
    row = await payment_row(payment_stack, state.payment_id)
    assert (row.status, row.amount_refunded) == ("NEEDS_REVIEW", 0)
    [refund_row] = await refund_rows(payment_stack, state.payment_id)
    assert (refund_row.status, refund_row.failure_reason) == ("failed", record.failure_reason)
    resumed = await resolve(handle, "retry")
    assert resumed.status == "CAPTURED"
    assert await ledger_findings(payment_stack) == []


# ----------------------------------------------------------------------------- through the API


@pytest_asyncio.fixture(loop_scope="session")
async def http(payment_stack: PaymentStack) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(payment_stack.settings, payment_stack.client, FAST_TIMINGS) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def merchant(payment_stack: PaymentStack) -> str:
    return await new_key(payment_stack.engine, payment_stack.settings, "merchant")


async def test_refund_api_creates_replays_lists_and_refuses_in_stripe_shape(
    http: httpx.AsyncClient, merchant: str, payment_stack: PaymentStack
) -> None:
    created = await http.post(
        "/v1/payments", json=payment_body(amount=10_000), headers=auth(merchant, uuid.uuid4().hex)
    )
    assert created.status_code == 200, created.text
    payment = created.json()
    handle = payment_stack.client.get_workflow_handle(f"payment-{payment['order_id']}")
    await disbursed(handle)
    path = f"/v1/payments/{payment['id']}/refunds"

    missing_key = await http.post(path, json={"amount": 100}, headers=auth(merchant))
    assert missing_key.status_code == 400
    too_much = await http.post(path, json={"amount": 10_001}, headers=auth(merchant, uuid.uuid4().hex))
    assert too_much.status_code == 400
    assert error_of(too_much) | {"message": ""} == {
        "type": "invalid_request_error",
        "code": "amount_too_large",
        "message": "",
        "param": "amount",
        "doc_url": "README.md#error-amount_too_large",
    }
    wrong_type = await http.post(path, json={"amount": "12.50"}, headers=auth(merchant, uuid.uuid4().hex))
    assert (wrong_type.status_code, error_of(wrong_type)["param"]) == (400, "amount")
    assert stripe_refunds(payment_stack, payment["stripe_payment_intent_id"]) == []

    key = uuid.uuid4().hex
    first = await http.post(path, json={"amount": 2500, "reason": "duplicate"}, headers=auth(merchant, key))
    assert first.status_code == 200, first.text
    refund_out = first.json()
    assert REFUND_ID_PATTERN.match(refund_out["id"]) and refund_out["payment"] == payment["id"]
    assert (refund_out["object"], refund_out["amount"], refund_out["currency"], refund_out["reason"]) == (
        "refund",
        2500,
        "USD",
        "duplicate",
    )
    assert refund_out["parts"] == {
        "application_fee_amount": 250,
        "tax_amount": 0,
        "recipients": [{"account_id": payment["split"]["recipients"][0]["account_id"], "amount": 2250}],
    }
    again = await http.post(path, json={"amount": 2500, "reason": "duplicate"}, headers=auth(merchant, key))
    assert (again.status_code, again.headers["Idempotent-Replayed"], again.json()["id"]) == (
        200,
        "true",
        refund_out["id"],
    )
    assert [r["amount"] for r in stripe_refunds(payment_stack, payment["stripe_payment_intent_id"])] == [2500]

    await refund_done(handle, refund_out["id"])
    fetched = await http.get(f"/v1/refunds/{refund_out['id']}", headers=auth(merchant))
    assert fetched.status_code == 200
    assert (fetched.json()["status"], fetched.json()["recoveries"][0]["recovered"]) == ("succeeded", True)
    listed = await http.get(path, headers=auth(merchant))
    assert [item["id"] for item in listed.json()["data"]] == [refund_out["id"]]
    assert listed.json()["has_more"] is False
    shown = (await http.get(f"/v1/payments/{payment['id']}", headers=auth(merchant))).json()
    assert (shown["status"], shown["amount_refunded"]) == ("partially_refunded", 2500)
    ledger = (await http.get(f"/v1/payments/{payment['id']}/ledger", headers=auth(merchant))).json()
    chain = [
        (entry["metadata"].get("refund_id"), entry["metadata"].get("reversal_id") is not None)
        for entry in ledger["data"]
        if entry["metadata"].get("capture_key") == f"payment:{payment['id']}:capture"
    ]
    assert chain == [(refund_out["id"], False), (refund_out["id"], True)]
    unknown = await http.get("/v1/refunds/rf_" + "a" * 24, headers=auth(merchant))
    assert (unknown.status_code, error_of(unknown)["code"]) == (404, "resource_missing")


async def test_refund_api_refuses_an_uncaptured_payment(
    http: httpx.AsyncClient, merchant: str, payment_stack: PaymentStack
) -> None:
    created = await http.post(
        "/v1/payments", json=payment_body(capture_method="manual"), headers=auth(merchant, uuid.uuid4().hex)
    )
    assert created.json()["status"] == "authorized", created.text
    refused = await http.post(
        f"/v1/payments/{created.json()['id']}/refunds", json={}, headers=auth(merchant, uuid.uuid4().hex)
    )
    assert refused.status_code == 400
    error = error_of(refused)
    assert error["code"] == "payment_not_captured" and "cancel" in error["message"]
    assert stripe_refunds(payment_stack, created.json()["stripe_payment_intent_id"]) == []


# ----------------------------------------------------------------------------- disputes


async def test_lost_dispute_under_the_recipients_policy_pulls_each_share_back(payment_stack: PaymentStack) -> None:
    payment = three_way_order(payment_method="pm_card_createDispute", dispute_loss_policy="recipients")
    seller, driver = (recipient.account_id for recipient in payment.recipients)
    state, handle = await start(payment_stack, payment)
    await disbursed(handle)
    dispute = await dispute_of(payment_stack, state.stripe_payment_intent_id)
    await signal_dispute(handle, dispute, "charge.dispute.created")
    disputed = await wait_for_status(handle, "DISPUTED")
    assert disputed.dispute_status == "needs_response"
    assert await refund_refused(handle, refund_request(100)) == "charge_disputed"
    payment_stack.emulator.control.close_dispute(dispute["id"], "lost")
    await signal_dispute(handle, dispute, "charge.dispute.closed")
    final = await asyncio.wait_for(handle.result(), 60)
    assert (final.status, final.dispute_status) == ("REVERSED", "lost")
    # The whole 10000 is lost: each recipient gives back all it was paid; fee and tax stay lost.
    assert reversals_of(payment_stack, payment.order_id) == {seller: [5985], driver: [2565]}
    assert [(item.account_id, item.amount, item.booked) for item in final.dispute_recoveries] == [
        (seller, 5985, True),
        (driver, 2565, True),
    ]
    fee = stripe_fee(payment_stack, str(final.stripe_charge_id))
    dispute_fee = sum(bt["fee"] for bt in dispute["balance_transactions"])
    assert await postings_by_account(payment_stack, state.payment_id) == {
        "stripe:pending:usd": -fee - dispute_fee,
        "platform:fees:usd": -950,
        "tax:payable:usd": -500,
        "platform:processing_fees:usd": fee,
        "platform:disputes:usd": dispute_fee + 10_000 - 8550,
    }
    row = await payment_row(payment_stack, state.payment_id)
    assert (row.status, row.dispute_status) == ("REVERSED", "lost")
    assert await ledger_findings(payment_stack) == []


async def test_dispute_inquiry_moves_no_money_and_its_status_is_recorded(payment_stack: PaymentStack) -> None:
    payment = new_order(payment_method="pm_card_createDisputeInquiry")
    state, handle = await start(payment_stack, payment)
    await disbursed(handle)
    before = await postings_by_account(payment_stack, state.payment_id)
    inquiry = await dispute_of(payment_stack, state.stripe_payment_intent_id)
    assert inquiry["status"] == "warning_needs_response"
    await signal_dispute(handle, inquiry, "charge.dispute.created")
    deadline = asyncio.get_running_loop().time() + 30
    while (row := await payment_row(payment_stack, state.payment_id)).dispute_status != "warning_needs_response":
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.2)
    payment_stack.emulator.control.close_dispute(inquiry["id"], "warning_closed")
    await signal_dispute(handle, inquiry, "charge.dispute.closed")
    while (row := await payment_row(payment_stack, state.payment_id)).dispute_status != "warning_closed":
        assert asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.2)
    assert row.status in ("CAPTURED", "SETTLED")
    assert await postings_by_account(payment_stack, state.payment_id) == before
    assert (await handle.query(QUERY_STATE, result_type=PaymentState)).disputes == {}
