"""`penny demo`: a short marketplace scenario against the running stack, with a readable summary.

1. the stack answers (/healthz) and a workflow runs end to end;
2. a $99.99 order with a 10% platform fee and one seller (a destination charge);
3. an order paying a seller, a driver and tax (separate transfers in one transfer group);
4. a declined card;
5. a manual capture: authorised first, captured partially later (the rest is released);
6. refunds of the three-way payment: a partial refund, then the rest, each party's share
   given back (the recipients' by transfer reversal), with the payment's ledger after each;
7. disputes (with the embedded emulator): one won, one lost, with the ledger after each;
then each payment's states and the ledger's balances, and the ledger's own verification
(every entry balanced, the whole ledger sums to zero: no lost cent).

The demo compresses the waits (settlement polling) so it finishes in seconds; the logic is
the production logic. With the embedded emulator it advances the emulator's clock so Stripe
makes the funds available.
"""

from __future__ import annotations

import asyncio
import uuid
from dataclasses import replace
from typing import Any

import httpx
from temporalio.client import Client, WorkflowHandle

from api.workflow_client import start_payment
from penny.client import AsyncPennyClient, PennyError
from penny.settings import Settings
from workflows.health import HealthCheckInput, HealthCheckWorkflow
from workflows.ids import refund_id_for_request
from workflows.payment_models import (
    QUERY_STATE,
    UPDATE_CAPTURE,
    UPDATE_REFUND,
    CaptureRequest,
    PaymentInput,
    PaymentState,
    PaymentTimings,
    RefundRecord,
    RefundRequest,
    SplitRecipientSpec,
    workflow_id_for_order,
)
from workflows.search_attributes import SEARCH_ATTRIBUTE_TYPES

DEMO_TIMINGS = replace(
    PaymentTimings(),
    settlement_poll_interval_seconds=1,
    processing_poll_interval_seconds=1,
    dispute_window_seconds=3600,
)
SETTLEMENT_WAIT_SECONDS = 30
STEP_WAIT_SECONDS = 30


def api_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.api_port}"


def api_is_up(settings: Settings) -> bool:
    try:
        return httpx.get(f"{api_url(settings)}/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def money(amount_minor: int, currency: str) -> str:
    from ledger.money import format_amount

    return f"{format_amount(amount_minor, currency)} {currency}"


async def _start_payment(client: Client, settings: Settings, payment: PaymentInput) -> tuple[PaymentState, Any]:
    """Start the order's workflow exactly as the API does, and return its first milestone and handle."""
    state = await start_payment(client, settings, payment)
    return state, client.get_workflow_handle(workflow_id_for_order(payment.order_id), result_type=PaymentState)


async def _wait_settled(handle: WorkflowHandle[Any, Any]) -> PaymentState:
    state: PaymentState = await handle.query(QUERY_STATE, result_type=PaymentState)
    for _ in range(SETTLEMENT_WAIT_SECONDS * 5):
        state = await handle.query(QUERY_STATE, result_type=PaymentState)
        if state.status not in ("CAPTURED", "AUTHORIZED", "PROCESSING", "CREATED"):
            break
        await asyncio.sleep(0.2)
    return state


def _print_payment(title: str, state: PaymentState) -> None:
    print(f"\n  {title}")
    print(f"    order {state.order_id}  payment {state.payment_id}  → {state.status}")
    if state.split is not None:
        parts = ", ".join(
            f"{part.role} {part.account_id} {money(part.amount, state.currency)}" for part in state.split.parts
        )
        currency = state.currency
        print(
            f"    split of {money(state.split.total, currency)}: fee {money(state.split.platform_fee, currency)}"
            f", tax {money(state.split.tax, currency)}, {parts}"
        )
    if state.failure_code:
        print(f"    failure: {state.failure_code} ({state.failure_message})")
    ignored = [line for line in state.history if " ignored " in line]
    for line in state.history:
        if " ignored " not in line:
            print(f"      {line}")
    if ignored:
        print(f"      (+ {len(ignored)} webhook events that changed nothing, recorded as ignored with the reason)")


async def _print_ledger(settings: Settings, account_codes: set[str]) -> None:
    from ledger import ledger as books
    from penny.db import create_engine

    engine = create_engine(settings.effective_database_url, pool_size=2)
    try:
        async with engine.connect() as connection:
            print("\n  Ledger balances touched by the demo (posted / pending, minor units):")
            for code in sorted(account_codes):
                try:
                    balance = await books.balance(connection, code)
                except Exception:
                    continue
                print(f"    {code:<40} {balance.posted:>10} / {balance.pending:>6}  {balance.currency}")
            findings = await books.verify(connection)
        if findings:
            print(f"  ✗ ledger verification found {len(findings)} problems: {findings[:3]}")
        else:
            print("  ✓ ledger verified: every entry balanced, all balances sum to zero per currency — no lost cent")
    finally:
        await engine.dispose()


async def run_demo(settings: Settings) -> None:
    print("\n=== Penny demo ===")
    async with httpx.AsyncClient(base_url=api_url(settings), timeout=10.0) as http:
        health = (await http.get("/healthz")).json()
    for name, state in health["dependencies"].items():
        mark = "✓" if state["ok"] else "✗"
        print(f"  {mark} {name:<9} {state['detail']}")

    client = await Client.connect(settings.effective_temporal_address, namespace=settings.temporal_namespace)
    result = await client.execute_workflow(
        HealthCheckWorkflow.run,
        HealthCheckInput(source="penny demo"),
        id=f"demo-health-{uuid.uuid4()}",
        task_queue=settings.temporal_task_queue,
    )
    print(f"  ✓ workflow  HealthCheckWorkflow wrote heartbeat #{result.heartbeat_id} to {result.database!r}")
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=settings.temporal_namespace)
    )
    registered = sorted(name for name in SEARCH_ATTRIBUTE_TYPES if name in listed.custom_attributes)
    print(f"  ✓ search attributes: {', '.join(registered)}")

    run = uuid.uuid4().hex[:6]
    seller, driver = f"acct_demo_seller_{run}", f"acct_demo_driver_{run}"
    await _api_tour(settings, run, seller)

    def order(name: str, **fields: Any) -> PaymentInput:
        base = PaymentInput(
            order_id=f"demo-{run}-{name}",
            amount=9999,
            currency="USD",
            customer=f"cus_demo_{run}",
            payment_method="pm_card_visa",
            recipients=[SplitRecipientSpec(seller, share_bps=10_000)],
            platform_fee_bps=1000,
            timings=DEMO_TIMINGS,
            description=f"Penny demo: {name}",
        )
        return replace(base, **fields)

    one_seller, one_handle = await _start_payment(client, settings, order("one-seller"))
    three_way, three_handle = await _start_payment(
        client,
        settings,
        order(
            "seller-driver-tax",
            amount=4999,
            tax_amount=400,
            recipients=[
                SplitRecipientSpec(seller, share_bps=7000, role="seller"),
                SplitRecipientSpec(driver, share_bps=3000, role="driver"),
            ],
        ),
    )
    declined, _ = await _start_payment(
        client, settings, order("declined", payment_method="pm_card_chargeDeclinedInsufficientFunds")
    )
    manual, manual_handle = await _start_payment(client, settings, order("manual-capture", capture_method="manual"))
    authorized_status = manual.status
    manual = await manual_handle.execute_update(UPDATE_CAPTURE, CaptureRequest(amount=7500), result_type=PaymentState)

    if settings.uses_emulator:
        async with httpx.AsyncClient(base_url=settings.effective_stripe_api_base, timeout=10.0) as emulator:
            await emulator.post("/_emulator/clock/advance", json={"seconds": 3 * 24 * 3600})
    one_seller = await _wait_settled(one_handle)
    three_way = await _wait_settled(three_handle)
    manual = await _wait_settled(manual_handle)

    _print_payment("1. $99.99, 10% platform fee, one seller (destination charge)", one_seller)
    _print_payment("2. $49.99 paying a seller (70%), a driver (30%) and $4.00 tax", three_way)
    _print_payment("3. a declined card", declined)
    _print_payment(f"4. manual capture: {authorized_status}, then $75.00 of $99.99 captured", manual)

    await _refund_tour(settings, run, three_handle)
    if settings.uses_emulator:
        await _dispute_tour(client, settings, order)

    await _print_ledger(
        settings,
        {
            "stripe:pending:usd",
            "stripe:available:usd",
            "platform:fees:usd",
            "platform:processing_fees:usd",
            "tax:payable:usd",
            f"seller:{seller}:payable:usd",
            f"seller:{driver}:payable:usd",
        },
    )
    print(f"\n  Find them in the Temporal UI: http://{settings.host}:{settings.temporal_ui_port} (OrderId STARTS_WITH)")
    print("=== demo complete ===\n")


async def _wait_for(handle: WorkflowHandle[Any, Any], done: Any) -> PaymentState:
    """Query the payment until `done(state)` (bounded by STEP_WAIT_SECONDS); the last state either way."""
    state: PaymentState = await handle.query(QUERY_STATE, result_type=PaymentState)
    for _ in range(STEP_WAIT_SECONDS * 5):
        if done(state):
            break
        await asyncio.sleep(0.2)
        state = await handle.query(QUERY_STATE, result_type=PaymentState)
    return state


async def _print_payment_ledger(settings: Settings, payment_id: str) -> None:
    """The payment's posted entries summed per account (debits positive): where every cent went."""
    from sqlalchemy import text

    from penny.db import create_engine

    engine = create_engine(settings.effective_database_url, pool_size=1)
    try:
        async with engine.connect() as connection:
            rows = await connection.execute(
                text(
                    """
                    SELECT a.code, sum(p.amount) AS amount, count(DISTINCT e.id) AS entries
                      FROM ledger.postings p
                      JOIN ledger.entries e ON e.id = p.entry_id
                      JOIN ledger.accounts a ON a.id = p.account_id
                     WHERE e.metadata ->> 'payment_id' = :id AND e.kind = 'posted'
                     GROUP BY a.code ORDER BY a.code
                    """
                ),
                {"id": payment_id},
            )
            lines = [(row.code, int(row.amount)) for row in rows]
    finally:
        await engine.dispose()
    print("      ledger of this payment, net per account (debits +, credits −):")
    for code, amount in lines:
        if amount:
            print(f"        {code:<46} {amount:>8}")
    print(f"        {'(sum)':<46} {sum(amount for _, amount in lines):>8}")


async def _refund_tour(settings: Settings, run: str, handle: WorkflowHandle[Any, Any]) -> None:
    state: PaymentState = await handle.query(QUERY_STATE, result_type=PaymentState)
    print(f"\n  6. Refunds of payment 2 ({money(state.amount_captured, state.currency)}, {state.status})")
    for step, amount in (("refund-1", 2000), ("refund-2", None)):
        request = RefundRequest(
            refund_id=refund_id_for_request(state.payment_id, "demo", f"demo-{run}-{step}"),
            amount=amount,
            reason="requested_by_customer",
        )
        record: RefundRecord = await handle.execute_update(UPDATE_REFUND, request, result_type=RefundRecord)
        state = await _wait_for(
            handle,
            lambda current, refund_id=record.refund_id: all(
                item.status != "pending" for item in current.refunds if item.refund_id == refund_id
            ),
        )
        [record] = [item for item in state.refunds if item.refund_id == record.refund_id]
        what = "part" if amount else "the rest"
        print(
            f"    refund {record.refund_id} of {money(record.amount, state.currency)} ({what}) → {record.status}; "
            f"payment {state.status}"
        )
        print(
            f"      given back: platform fee {money(record.platform_fee, state.currency)}, "
            f"tax {money(record.tax, state.currency)}"
            + "".join(
                f", {part.role} {part.account_id} {money(part.amount, state.currency)}" for part in record.recipients
            )
        )
        for item in record.recoveries:
            print(
                f"      {item.account_id}: transfer reversal {item.reversal_id} of {money(item.amount, state.currency)}"
            )
        await _print_payment_ledger(settings, state.payment_id)


async def _dispute_tour(client: Client, settings: Settings, order: Any) -> None:
    from stripe_emulator.control import AsyncEmulatorControl

    print("\n  7. Disputes (the emulator's card network decides)")
    async with AsyncEmulatorControl(settings.effective_stripe_api_base) as control:
        for outcome in ("won", "lost"):
            state, handle = await _start_payment(
                client, settings, order(f"dispute-{outcome}", payment_method="pm_card_createDispute")
            )
            state = await _wait_for(handle, lambda current: current.status == "DISPUTED")
            if state.status != "DISPUTED":
                print(f"    the dispute did not reach the payment in {STEP_WAIT_SECONDS} s ({state.status})")
                continue
            disputes = (await control.state(["disputes"]))["disputes"]
            [dispute] = [item for item in disputes if item["payment_intent"] == state.stripe_payment_intent_id]
            print(
                f"    payment {state.payment_id} DISPUTED by {dispute['id']}"
                f" ({money(dispute['amount'], state.currency)})"
            )
            await _print_payment_ledger(settings, state.payment_id)
            await control.close_dispute(dispute["id"], outcome)
            wanted = "SETTLED" if outcome == "won" else "REVERSED"
            state = await _wait_for(handle, lambda current, wanted=wanted: current.status == wanted)
            print(f"    dispute {outcome} → payment {state.status} (dispute status {state.dispute_status})")
            await _print_payment_ledger(settings, state.payment_id)


async def _api_tour(settings: Settings, run: str, seller: str) -> None:
    """Through the API with `penny.client`: a payment, its retry under the same Idempotency-Key,
    its unit-named split and ledger lines, the customer's payments, and a refused card number."""
    key_file = settings.data_dir / "dev_api_key"
    if not key_file.exists():
        print("  (no development API key in the data directory: skipping the API tour)")
        return
    order: dict[str, Any] = {
        "order_id": f"demo-{run}-api",
        "amount": 9999,
        "currency": "usd",
        "customer": f"cus_demo_{run}",
        "payment_method": "pm_card_visa",
        "recipients": [{"account_id": seller, "share_bps": 10000}],
        "application_fee_bps": 1000,
        "tax_amount": 0,
    }
    print("\n  0. Through the API with penny.client (POST /v1/payments, one Idempotency-Key per logical call)")
    async with AsyncPennyClient(key_file.read_text().strip(), api_url(settings)) as penny:
        payment = await penny.create_payment(**order, idempotency_key=f"demo-{run}-api")
        again = await penny.create_payment(**order, idempotency_key=f"demo-{run}-api")
        split = payment["split"]
        same = again["id"] == payment["id"]
        print(f"    payment {payment['id']} {payment['status']}; the same key again: same payment {same}")
        if split is not None:
            print(
                f"    application_fee_bps 1000 → split.application_fee_amount {split['application_fee_amount']}, "
                f"tax_amount {split['tax_amount']}, "
                + ", ".join(f"{part['account_id']} amount {part['amount']}" for part in split["recipients"])
                + " (minor units)"
            )
        expanded = await penny.retrieve_payment(payment["id"], expand=["ledger_lines"])
        lines = expanded.get("ledger_lines")
        print(f"    expand[]=ledger_lines: ledger entries {[entry['id'] for entry in lines['data']] if lines else []}")
        listed = [
            each["id"] async for each in (await penny.list_payments(customer=order["customer"])).auto_paging_iter()
        ]
        print(f"    the customer's payments (auto-paginated): {listed}")
        try:
            await penny.create_payment(
                **{**order, "order_id": f"demo-{run}-card", "metadata": {"note": "4242 4242 4242 4242"}}
            )
        except PennyError as refused:
            print(f"    a card number in metadata: {refused.status} {refused.code} (request {refused.request_id})")


def run_demo_sync(settings: Settings) -> None:
    asyncio.run(run_demo(settings))
