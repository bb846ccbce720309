"""The payment activities' one-statement paths, on real PostgreSQL: a transition
(`apply_transition`, migration 0013) writes exactly what the general path writes, and a
payment's preparation (`prepare_payment`, migration 0014) writes its row, audit row and outbox
event once and reads what the risk screen decides on.

Two payments with the same order details take the same transitions, one through the
one-statement path and one through the general (statement by statement) path; their rows,
audit trails, outbox events, review items and ledger entries must be the same. Then the edges:
a retried transition, a conflict, a ledger refusal (nothing half-written), a manual capture's
hold (handed to the general path) and a cached split that is not the row's.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.exceptions import ApplicationError

from activities.payment_types import (
    INVALID_PAYMENT_REQUEST,
    LEDGER_REJECTED,
    TRANSITION_CONFLICT,
    LedgerAction,
    PaymentRowUpdate,
    PreparePaymentInput,
    ReviewSpec,
    TransitionInput,
    TransitionResult,
)
from activities.payments import RISK_REVIEW_AMOUNT_MINOR, RISK_VELOCITY_MAX_PAYMENTS, PaymentActivities
from ledger import ledger as books
from workflows.payment_models import ComputedSplit, SplitPart, SplitRecipientSpec

Apply = Callable[[TransitionInput], Awaitable[TransitionResult]]


def one_statement_only(activities: PaymentActivities) -> Apply:
    """`apply_transition`, failing the test if it falls back to the general path."""

    async def general_path(request: TransitionInput) -> TransitionResult:
        raise AssertionError(f"{request.transition_id} took the general path")

    activities._apply_in_steps = general_path  # type: ignore[method-assign]
    return activities.apply_transition


def general_path_calls(activities: PaymentActivities) -> list[str]:
    """The transition ids `activities` sends through the general path, as they go."""
    calls: list[str] = []

    async def general_path(request: TransitionInput) -> TransitionResult:
        calls.append(request.transition_id)
        return await PaymentActivities._apply_in_steps(activities, request)

    activities._apply_in_steps = general_path  # type: ignore[method-assign]
    return calls


async def prepare(activities: PaymentActivities, tag: str, *, capture_method: str = "automatic") -> str:
    payment_id = f"pay_{tag}_{uuid.uuid4().hex[:10]}"
    await activities.prepare_payment(
        PreparePaymentInput(
            payment_id=payment_id,
            workflow_id=f"wf-{payment_id}",
            order_id=f"order-{payment_id}",
            amount=9999,
            currency="USD",
            customer="cus_statement",
            capture_method=capture_method,
            recipients=[
                SplitRecipientSpec(f"acct_seller_{payment_id}", share_bps=7000),
                SplitRecipientSpec(f"acct_driver_{payment_id}", share_bps=3000, role="driver"),
            ],
            platform_fee_bps=1000,
            tax_amount=500,
        )
    )
    return payment_id


def transitions(payment_id: str) -> list[TransitionInput]:
    """A payment's life to CAPTURED, its fee and transfers booked, then a review."""
    seller, driver = f"acct_seller_{payment_id}", f"acct_driver_{payment_id}"
    return [
        TransitionInput(
            transition_id=f"{payment_id}:processing",
            payment_id=payment_id,
            expected_status="CREATED",
            to_status="PROCESSING",
            event="charge_requested",
            reason="PaymentIntent created",
            row=PaymentRowUpdate(stripe_payment_intent_id=f"pi_{payment_id}"),
            details={"attempt": "1"},
        ),
        TransitionInput(
            transition_id=f"{payment_id}:captured",
            payment_id=payment_id,
            expected_status="PROCESSING",
            to_status="CAPTURED",
            event="payment_intent.succeeded",
            reason="captured",
            stripe_event_id=f"evt_{payment_id}",
            ledger=[LedgerAction("capture", amount=9999)],
            row=PaymentRowUpdate(amount_captured=9999, stripe_charge_id=f"ch_{payment_id}"),
        ),
        TransitionInput(
            transition_id=f"{payment_id}:book:fee",
            payment_id=payment_id,
            expected_status="CAPTURED",
            to_status="CAPTURED",
            event="book:fee",
            reason="fee and transfers",
            ledger=[
                LedgerAction("processing_fee", amount=320),
                LedgerAction("transfer", amount=5948, account_id=seller, reference=f"tr_s_{payment_id}"),
                LedgerAction("transfer", amount=2549, account_id=driver, reference=f"tr_d_{payment_id}"),
            ],
        ),
        TransitionInput(
            transition_id=f"{payment_id}:review",
            payment_id=payment_id,
            expected_status="CAPTURED",
            to_status="NEEDS_REVIEW",
            event="step_failed",
            actor="workflow",
            reason="settlement poll failed",
            review=ReviewSpec("step_failed", "Stripe down", {"step": "stripe_charge_balance"}),
        ),
    ]


async def written(engine: AsyncEngine, payment_id: str) -> dict[str, Any]:
    """Everything a transition writes for `payment_id`, with the payment's id made generic."""
    queries = {
        "row": "SELECT status, amount_capturable, amount_captured, amount_refunded, stripe_payment_intent_id,"
        " stripe_charge_id, failure_code, failure_message, dispute_status, version, split"
        " FROM payments WHERE id = :id",
        "events": "SELECT transition_id, from_status, to_status, event, actor, reason, stripe_event_id, request_id,"
        " cardinality(ledger_entry_ids) AS entries, details FROM payment_events WHERE payment_id = :id ORDER BY id",
        "outbox": "SELECT topic, dedupe_key, payload - 'occurred_at' AS payload FROM outbox WHERE aggregate_id = :id"
        " ORDER BY id",
        "reviews": "SELECT dedupe_key, kind, reason, details, status FROM review_items WHERE payment_id = :id"
        " ORDER BY id",
        "entries": "SELECT e.idempotency_key, e.kind, e.resolves_entry_id IS NOT NULL AS resolves, e.description,"
        " (SELECT array_agg(a.code || ' ' || p.amount ORDER BY p.line) FROM ledger.postings p"
        "  JOIN ledger.accounts a ON a.id = p.account_id WHERE p.entry_id = e.id) AS postings"
        " FROM ledger.entries e WHERE e.metadata ->> 'payment_id' = :id ORDER BY e.id",
    }
    out: dict[str, Any] = {}
    async with engine.connect() as connection:
        for name, query in queries.items():
            rows = (await connection.execute(text(query), {"id": payment_id})).mappings().all()
            out[name] = [{key: _generic(value, payment_id) for key, value in row.items()} for row in rows]
    return out


def _generic(value: Any, payment_id: str) -> Any:
    if isinstance(value, str):
        return value.replace(payment_id, "PAYMENT")
    if isinstance(value, list):
        return [_generic(item, payment_id) for item in value]
    if isinstance(value, dict):
        return {key: _generic(item, payment_id) for key, item in value.items()}
    return value


async def test_one_statement_writes_what_the_general_path_writes(engine: AsyncEngine) -> None:
    fast, general = PaymentActivities(engine), PaymentActivities(engine)
    fast_id, general_id = await prepare(fast, "fast"), await prepare(general, "general")
    apply_fast = one_statement_only(fast)
    for fast_step, general_step in zip(transitions(fast_id), transitions(general_id), strict=True):
        fast_result = await apply_fast(fast_step)
        general_result = await general._apply_in_steps(general_step)
        assert fast_result.applied and general_result.applied
        assert fast_result.status == general_result.status == fast_step.to_status
        assert len(fast_result.ledger_entry_ids) == len(general_result.ledger_entry_ids) == len(fast_step.ledger)
    fast_rows, general_rows = await written(engine, fast_id), await written(engine, general_id)
    assert fast_rows == general_rows
    # What an operator would look at, spelled out once.
    assert fast_rows["row"][0]["status"] == "NEEDS_REVIEW" and fast_rows["row"][0]["amount_captured"] == 9999
    assert [event["to_status"] for event in fast_rows["events"]] == [
        "CREATED",
        "PROCESSING",
        "CAPTURED",
        "CAPTURED",
        "NEEDS_REVIEW",
    ]
    assert [event["entries"] for event in fast_rows["events"]] == [0, 0, 1, 3, 0]
    assert [item["topic"] for item in fast_rows["outbox"]] == [
        "payment.created",
        "payment.processing",
        "payment.captured",
        "payment.needs_review",
    ]
    assert fast_rows["outbox"][2]["payload"]["previous_status"] == "PROCESSING"
    assert [(item["kind"], item["status"]) for item in fast_rows["reviews"]] == [("step_failed", "open")]
    assert len(fast_rows["entries"]) == 4


async def test_a_retried_transition_changes_nothing_and_returns_its_entries(engine: AsyncEngine) -> None:
    activities = PaymentActivities(engine)
    payment_id = await prepare(activities, "retry")
    apply = one_statement_only(activities)
    steps = transitions(payment_id)
    await apply(steps[0])
    first = await apply(steps[1])
    before = await written(engine, payment_id)
    again = await apply(steps[1])
    assert (again.applied, again.status, again.ledger_entry_ids) == (False, "CAPTURED", first.ledger_entry_ids)
    assert await written(engine, payment_id) == before


async def test_a_conflict_writes_nothing(engine: AsyncEngine) -> None:
    activities = PaymentActivities(engine)
    payment_id = await prepare(activities, "conflict")
    apply = one_statement_only(activities)
    before = await written(engine, payment_id)
    with pytest.raises(ApplicationError) as error:
        await apply(transitions(payment_id)[1])  # expects PROCESSING; the row is CREATED
    assert error.value.type == TRANSITION_CONFLICT
    assert error.value.details[0] == {"current": "CREATED", "expected": "PROCESSING"}
    assert await written(engine, payment_id) == before


async def test_a_ledger_refusal_rolls_the_whole_transition_back(engine: AsyncEngine) -> None:
    activities = PaymentActivities(engine)
    payment_id = await prepare(activities, "refused")
    apply = one_statement_only(activities)
    steps = transitions(payment_id)
    await apply(steps[0])
    await apply(steps[1])
    before = await written(engine, payment_id)
    # The capture's entry again, with other postings: the ledger's idempotency check (in SQL,
    # inside the statement) refuses it, and the row's update and audit row go with it.
    with pytest.raises(ApplicationError) as error:
        await apply(
            TransitionInput(
                transition_id=f"{payment_id}:captured-again",
                payment_id=payment_id,
                expected_status="CAPTURED",
                to_status="REFUNDED",
                event="capture",
                ledger=[LedgerAction("capture", amount=5000)],
                row=PaymentRowUpdate(amount_captured=5000),
            )
        )
    assert error.value.type == LEDGER_REJECTED
    assert error.value.details[0]["code"] == "idempotency_conflict"
    assert await written(engine, payment_id) == before


async def test_entries_sharing_a_key_take_the_general_path(engine: AsyncEngine) -> None:
    activities = PaymentActivities(engine)
    payment_id = await prepare(activities, "twice")
    steps = transitions(payment_id)
    await activities.apply_transition(steps[0])
    before = await written(engine, payment_id)
    general_calls = general_path_calls(activities)
    twice = TransitionInput(
        transition_id=f"{payment_id}:captured-twice",
        payment_id=payment_id,
        expected_status="PROCESSING",
        to_status="CAPTURED",
        event="payment_intent.succeeded",
        ledger=[LedgerAction("capture", amount=9999), LedgerAction("capture", amount=5000)],
    )
    with pytest.raises(ApplicationError) as error:
        await activities.apply_transition(twice)
    # One batch cannot hold one key twice: the general path posted them in turn and was refused.
    assert general_calls == [twice.transition_id]
    assert error.value.type == LEDGER_REJECTED
    assert await written(engine, payment_id) == before


async def test_a_manual_capture_settles_its_hold_through_the_general_path(engine: AsyncEngine) -> None:
    activities = PaymentActivities(engine)
    payment_id = await prepare(activities, "manual", capture_method="manual")
    general_calls = general_path_calls(activities)
    authorized = await activities.apply_transition(
        TransitionInput(
            transition_id=f"{payment_id}:authorized",
            payment_id=payment_id,
            expected_status="CREATED",
            to_status="AUTHORIZED",
            event="payment_intent.amount_capturable_updated",
            ledger=[LedgerAction("authorization_hold", amount=9999)],
            row=PaymentRowUpdate(amount_capturable=9999),
        )
    )
    captured = await activities.apply_transition(
        TransitionInput(
            transition_id=f"{payment_id}:captured",
            payment_id=payment_id,
            expected_status="AUTHORIZED",
            to_status="CAPTURED",
            event="capture",
            ledger=[LedgerAction("capture", amount=6000)],
            row=PaymentRowUpdate(amount_captured=6000, amount_capturable=0),
        )
    )
    assert general_calls == [f"{payment_id}:captured"]  # the hold went in one statement
    assert len(authorized.ledger_entry_ids) == 1 and len(captured.ledger_entry_ids) == 2
    entries = (await written(engine, payment_id))["entries"]
    # The hold, what was captured from it, then the capture's split.
    assert [(entry["kind"], entry["resolves"]) for entry in entries] == [
        ("pending", False),
        ("posted", True),
        ("posted", False),
    ]


async def test_a_cached_split_that_is_not_the_rows_is_never_booked(engine: AsyncEngine) -> None:
    activities = PaymentActivities(engine)
    payment_id = await prepare(activities, "stale")
    reference = PaymentActivities(engine)
    reference_id = await prepare(reference, "reference")
    activities._splits[payment_id] = ComputedSplit(
        total=9999, currency="USD", platform_fee=0, tax=0, parts=[SplitPart(f"acct_other_{payment_id}", 9999)]
    )
    for step, reference_step in zip(transitions(payment_id)[:2], transitions(reference_id)[:2], strict=True):
        await activities.apply_transition(step)
        await reference.apply_transition(reference_step)
    # The statement refused the stale split (SQLSTATE PN001), the general path booked the row's.
    assert (await written(engine, payment_id))["entries"] == (await written(engine, reference_id))["entries"]
    # ... and the cache now holds the row's split.
    assert [part.account_id for part in activities._splits[payment_id].parts] == [
        f"acct_seller_{payment_id}",
        f"acct_driver_{payment_id}",
    ]


# ------------------------------------------------------------------ prepare_payment (migration 0014)


def prepare_input(payment_id: str, order_id: str, *, customer: str = "cus_prepare", amount: int = 9999) -> Any:
    return PreparePaymentInput(
        payment_id=payment_id,
        workflow_id=f"wf-{payment_id}",
        order_id=order_id,
        amount=amount,
        currency="USD",
        customer=customer,
        capture_method="automatic",
        recipients=[SplitRecipientSpec(f"acct_seller_{payment_id}", share_bps=10_000)],
        platform_fee_bps=1000,
        metadata={"cart": "c-1"},
        request_fingerprint="fp-1",
        request_id="req_1",
        payment_method="pm_card_visa",
    )


@pytest.mark.parametrize("path", ["one statement", "through SQLAlchemy"])
async def test_prepare_writes_the_row_its_audit_row_and_its_outbox_event_once(
    engine: AsyncEngine, path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    if path == "through SQLAlchemy":
        monkeypatch.setattr(books, "statement_driver", _no_driver)
    activities = PaymentActivities(engine)
    payment_id = f"pay_prep_{uuid.uuid4().hex[:10]}"
    request = prepare_input(payment_id, f"order-{payment_id}", customer=f"cus_{payment_id}")
    first = await activities.prepare_payment(request)
    assert first.created and first.risk is not None and first.risk.outcome == "allow"
    assert [(part.account_id, part.amount) for part in first.split.parts] == [(f"acct_seller_{payment_id}", 8999)]
    rows = await written(engine, payment_id)
    assert rows["row"] == [
        {
            "status": "CREATED",
            "amount_capturable": 0,
            "amount_captured": 0,
            "amount_refunded": 0,
            "stripe_payment_intent_id": None,
            "stripe_charge_id": None,
            "failure_code": None,
            "failure_message": None,
            "dispute_status": None,
            "version": 1,
            "split": {
                "total": 9999,
                "currency": "USD",
                "platform_fee": 1000,
                "tax": 0,
                "parts": [{"account_id": "acct_seller_PAYMENT", "amount": 8999, "role": "seller"}],
            },
        }
    ]
    assert rows["events"] == [
        {
            "transition_id": "PAYMENT:created",
            "from_status": None,
            "to_status": "CREATED",
            "event": "created",
            "actor": "api",
            "reason": "payment created",
            "stripe_event_id": None,
            "request_id": "req_1",
            "entries": 0,
            "details": {"amount": 9999, "currency": "USD", "split": rows["row"][0]["split"]},
        }
    ]
    assert [(item["topic"], item["dedupe_key"]) for item in rows["outbox"]] == [("payment.created", "PAYMENT:created")]
    payload = rows["outbox"][0]["payload"]
    assert (payload["status"], payload["previous_status"], payload["order_id"]) == ("CREATED", "", "order-PAYMENT")
    assert (payload["type"], payload["version"], payload["payment_version"]) == ("payment.created", 1, 1)
    # Again (a retry after a lost acknowledgement): nothing new, the same split, screened again.
    again = await activities.prepare_payment(request)
    assert (again.created, again.split, again.risk) == (False, first.split, first.risk)
    assert await written(engine, payment_id) == rows


async def _no_driver(connection: Any) -> None:
    return None


async def test_an_order_of_another_payment_is_refused_and_nothing_is_written(engine: AsyncEngine) -> None:
    activities = PaymentActivities(engine)
    owner = f"pay_owner_{uuid.uuid4().hex[:10]}"
    order_id = f"order-{owner}"
    await activities.prepare_payment(prepare_input(owner, order_id))
    intruder = f"pay_intruder_{uuid.uuid4().hex[:10]}"
    with pytest.raises(ApplicationError) as error:
        await activities.prepare_payment(prepare_input(intruder, order_id))
    assert error.value.type == INVALID_PAYMENT_REQUEST
    assert error.value.message == f"order {order_id} already belongs to payment {owner}"
    assert await written(engine, intruder) == {"row": [], "events": [], "outbox": [], "reviews": [], "entries": []}


async def test_the_risk_screen_reads_the_blocklist_and_the_customers_velocity(engine: AsyncEngine) -> None:
    activities = PaymentActivities(engine)
    tag = uuid.uuid4().hex[:10]
    blocked_customer, busy_customer = f"cus_blocked_{tag}", f"cus_busy_{tag}"
    async with engine.begin() as connection:
        await connection.execute(
            text("INSERT INTO risk_blocklist (kind, value, reason) VALUES ('customer', :value, 'chargebacks')"),
            {"value": blocked_customer},
        )
    blocked = await activities.prepare_payment(
        prepare_input(f"pay_b_{tag}", f"order-b-{tag}", customer=blocked_customer)
    )
    assert blocked.risk is not None
    assert (blocked.risk.outcome, blocked.risk.reason) == ("block", "customer is blocklisted: chargebacks")
    for index in range(RISK_VELOCITY_MAX_PAYMENTS):
        earlier = await activities.prepare_payment(
            prepare_input(f"pay_v{index}_{tag}", f"order-v{index}-{tag}", customer=busy_customer)
        )
        assert earlier.risk is not None and earlier.risk.outcome == "allow"
    busy = await activities.prepare_payment(prepare_input(f"pay_v_{tag}", f"order-v-{tag}", customer=busy_customer))
    assert busy.risk is not None
    assert (busy.risk.outcome, busy.risk.reason) == (
        "review",
        f"customer made {RISK_VELOCITY_MAX_PAYMENTS} payments in the last hour",
    )
    large = await activities.prepare_payment(
        prepare_input(f"pay_l_{tag}", f"order-l-{tag}", customer=f"cus_l_{tag}", amount=RISK_REVIEW_AMOUNT_MINOR + 1)
    )
    assert large.risk is not None and large.risk.outcome == "review"


async def test_without_the_asyncpg_connection_transitions_take_the_general_path(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where SQLAlchemy's asyncpg adapter is not as expected, the same writes go through SQLAlchemy."""
    fast = PaymentActivities(engine)
    fast_id = await prepare(fast, "fast")
    apply_fast = one_statement_only(fast)
    for step in transitions(fast_id):
        await apply_fast(step)
    monkeypatch.setattr(books, "statement_driver", _no_driver)
    fallback = PaymentActivities(engine)
    general_calls = general_path_calls(fallback)
    fallback_id = await prepare(fallback, "fallback")
    for step in transitions(fallback_id):
        await fallback.apply_transition(step)
    assert general_calls == [step.transition_id for step in transitions(fallback_id)]
    assert await written(engine, fallback_id) == await written(engine, fast_id)
