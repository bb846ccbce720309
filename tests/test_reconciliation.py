"""Reconciliation on the real stack: the worker, Temporal, Postgres and a private Stripe emulator.

Every mismatch class the issue names is planted on purpose (behind Penny's back, at the
emulator) and must be found exactly once with its class; a clean day has no item; re-running a
window changes nothing; the one automatic repair (a missed webhook) moves the payment; the
Schedule exists after the worker's start and runs when triggered.

The emulator is private to this module, so its records are only this module's; each test
reconciles its own window (whole seconds, disjoint from the other tests'), so the records of
another test never fall into it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from pathlib import Path
from subprocess import DEVNULL
from typing import Any

import pytest
import pytest_asyncio
import stripe
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client, ScheduleOverlapPolicy, WorkflowExecutionStatus
from temporalio.service import RPCError
from temporalio.testing import ActivityEnvironment
from temporalio.worker import Replayer

from activities.reconciliation import ReconciliationActivities
from penny.reconciliation_schedule import (
    ensure_reconciliation_schedule,
    new_run_id,
    schedule_id,
    start_reconciliation,
)
from penny.settings import Settings
from tests.payment_fixtures import PaymentStack, running_stack, stack_settings
from tests.test_api_support import api_client, auth, new_key, run_cli
from tests.test_fault_paths import two_recipient_order
from tests.test_payment_workflow import new_order, start, wait_for_status
from tests.test_refunds import disbursed, refund, refund_done, refund_request
from worker import build_worker, workflow_runner
from workflows.payment_models import PaymentState
from workflows.reconciliation import ReconciliationWorkflow
from workflows.reconciliation_models import (
    MATCHED,
    MISMATCH_CLASSES,
    OBJECT_TYPES,
    REVIEW_KIND,
    FetchPagesInput,
    ReconciliationInput,
    ReconciliationResult,
    StartRunInput,
    reconciliation_workflow_id,
)

WAIT_SECONDS = 30.0
REPO = Path(__file__).resolve().parent.parent
_last_window_end = [0]


@pytest.fixture(scope="module")
def private_emulator(emulator_factory: Any) -> Any:
    return emulator_factory()


@pytest.fixture(scope="module")
def emulator_stripe(private_emulator: Any) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key="sk_test_penny_reconciliation",
        base_addresses={"api": private_emulator.base_url},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=30),
    )


@pytest_asyncio.fixture(loop_scope="session")
async def stack(
    temporal_client: Client, engine: AsyncEngine, database_url: str, private_emulator: Any, task_queue: str
) -> AsyncIterator[PaymentStack]:
    settings = stack_settings(temporal_client, database_url, task_queue, private_emulator)
    async with running_stack(temporal_client, engine, settings, private_emulator) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="session")
async def window_start() -> int:
    """A whole second after the previous test's window ended: windows never overlap."""
    start_unix = max(int(time.time()) + 1, _last_window_end[0])
    await asyncio.sleep(start_unix - time.time())
    return start_unix


async def reconcile(stack: PaymentStack, window_start_unix: int, window_end_unix: int | None = None) -> Any:
    """Run the workflow for the window (ending at the next whole second) and return the run's row."""
    if window_end_unix is None:
        window_end_unix = int(time.time()) + 1
        await asyncio.sleep(window_end_unix - time.time())
        _last_window_end[0] = window_end_unix
    run_id = new_run_id()
    handle = await start_reconciliation(
        stack.client,
        stack.task_queue,
        run_id=run_id,
        window_start_unix=window_start_unix,
        window_end_unix=window_end_unix,
        trigger="api",
        requested_by="test",
    )
    result = await handle.result()
    assert isinstance(result, ReconciliationResult) and result.run_id == run_id
    return await run_row(stack.engine, run_id)


async def run_row(engine: AsyncEngine, run_id: str) -> Any:
    async with engine.connect() as connection:
        return (
            await connection.execute(text("SELECT * FROM reconciliation_runs WHERE id = :id"), {"id": run_id})
        ).one()


async def run_items(engine: AsyncEngine, run_id: str) -> list[Any]:
    async with engine.connect() as connection:
        return list(
            await connection.execute(
                text(
                    """
                    SELECT i.* FROM reconciliation_items i JOIN reconciliation_run_items ri ON ri.item_id = i.id
                     WHERE ri.run_id = :id ORDER BY i.class, i.item_key
                    """
                ),
                {"id": run_id},
            )
        )


def class_of(item: Any) -> str:
    return str(item._mapping["class"])


def zero_counts(**found: int) -> dict[str, int]:
    counts = {name: 0 for name in (MATCHED, *MISMATCH_CLASSES)}
    counts.update(found)
    return counts


async def paid(stack: PaymentStack, payment: Any) -> PaymentState:
    """Start the payment and wait until it is captured and fully disbursed (fee and transfers booked)."""
    _, handle = await start(stack, payment)
    await wait_for_status(handle, "CAPTURED")
    return await disbursed(handle)


def emulator_object(stack: PaymentStack, object_id: str) -> dict[str, Any]:
    found: dict[str, Any] = stack.emulator.app.state.objects[object_id]
    return found


async def test_a_clean_day_has_no_items_and_counts_every_match(stack: PaymentStack, window_start: int) -> None:
    # A destination charge (one recipient) and a charge with two separate transfers.
    await paid(stack, new_order())
    await paid(stack, two_recipient_order())

    run = await reconcile(stack, window_start)

    # Matched: two PaymentIntents and three (payment, recipient) transfer groups.
    assert run.counts == zero_counts(matched=5)
    assert run.status == "completed" and run.trigger == "api" and run.repaired == 0
    assert await run_items(stack.engine, run.id) == []
    # Every Stripe list was read (the counts include the margin before the window: other tests' records).
    assert set(run.fetched) == {*OBJECT_TYPES, "transfer_reversal"}


async def test_every_planted_mismatch_is_found_once_with_its_class_and_a_rerun_changes_nothing(
    stack: PaymentStack, window_start: int, emulator_stripe: stripe.StripeClient
) -> None:
    control = stack.emulator.control
    # 1. A refund made at Stripe behind Penny's back.
    refunded = await paid(stack, new_order())
    stripe_refund = emulator_stripe.v1.refunds.create(
        {"payment_intent": refunded.stripe_payment_intent_id or "", "amount": 700}
    )
    # 2. A PaymentIntent Penny captured that Stripe now reports failed.
    declined = await paid(stack, new_order())
    control.override_intent_status(declined.stripe_payment_intent_id or "", "requires_payment_method")
    # 3. A second PaymentIntent for one order, made directly at Stripe with the same metadata.
    duplicated = await paid(stack, new_order())
    extra = emulator_stripe.v1.payment_intents.create(
        {
            "amount": duplicated.amount,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "metadata": {"order_id": duplicated.order_id, "payment_id": duplicated.payment_id},
        }
    )
    assert extra.status == "succeeded"
    # 4. An amount changed in Stripe's own state.
    changed = await paid(stack, new_order())
    emulator_object(stack, changed.stripe_payment_intent_id or "")["amount_received"] = changed.amount_captured - 1
    # 5. A destination charge's transfer reversed directly at Stripe.
    reversed_order = await paid(stack, new_order())
    [recipient] = [record.account_id for record in reversed_order.transfers]
    charge = emulator_object(stack, reversed_order.stripe_charge_id or "")
    emulator_stripe.v1.transfers.reversals.create(str(charge["transfer"]), {"amount": 250})
    # 6. A dispute Penny never heard of (its webhook is not delivered: no endpoint is registered).
    disputed = await paid(stack, new_order(payment_method="pm_card_createDispute"))
    dispute_id = await dispute_of_charge(stack, disputed.stripe_charge_id or "")
    # 7. A PaymentIntent that succeeded at Stripe for an order Penny has never seen.
    stranger = emulator_stripe.v1.payment_intents.create(
        {
            "amount": 4200,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "metadata": {"order_id": f"order_{uuid.uuid4().hex[:12]}"},
        }
    )

    run = await reconcile(stack, window_start)

    items = await run_items(stack.engine, run.id)
    assert sorted((class_of(item), item.item_key) for item in items) == sorted(
        [
            ("refund_missing_in_penny", stripe_refund.id),
            ("stripe_failed_or_missing", declined.payment_id),
            ("duplicate_charge", duplicated.order_id),
            ("amount_mismatch", changed.stripe_payment_intent_id),
            ("transfer_amount_mismatch", f"{reversed_order.payment_id}:{recipient}"),
            ("dispute_not_booked", dispute_id),
            ("penny_missing_or_not_captured", stranger.id),
        ]
    )
    by_class = {class_of(item): item for item in items}
    assert by_class["amount_mismatch"].stripe_values == {
        "payment_intent": changed.stripe_payment_intent_id,
        "amount_received": changed.amount_captured - 1,
    }
    assert by_class["amount_mismatch"].penny_values == {
        "payment_id": changed.payment_id,
        "amount_captured": changed.amount_captured,
        "ledger_captured": changed.amount_captured,
    }
    assert (
        by_class["transfer_amount_mismatch"].stripe_values["net"] + 250
        == (by_class["transfer_amount_mismatch"].penny_values["net"])
    )
    assert by_class["duplicate_charge"].stripe_id == extra.id
    assert by_class["penny_missing_or_not_captured"].repair is None  # no Penny payment: an operator decides
    # Matched: the subjects compared without an item: 4 PaymentIntents (refunded, duplicated,
    # reversed, disputed: their own items name another subject) and 5 of the 6 transfer groups.
    expected = zero_counts(
        matched=9,
        refund_missing_in_penny=1,
        stripe_failed_or_missing=1,
        duplicate_charge=1,
        amount_mismatch=1,
        transfer_amount_mismatch=1,
        dispute_not_booked=1,
        penny_missing_or_not_captured=1,
    )
    assert run.counts == expected
    # Every mismatch is one open review item of kind reconciliation_mismatch.
    reviews = await review_items_of(stack.engine, [item.review_item_id for item in items])
    assert [(review.kind, review.status) for review in reviews] == [(REVIEW_KIND, "open")] * 7

    again = await reconcile(stack, window_start, int(run.window_end.timestamp()))
    assert again.counts == run.counts
    assert [item.id for item in await run_items(stack.engine, again.id)] == [item.id for item in items]
    assert [review.id for review in await review_items_of(stack.engine, [item.review_item_id for item in items])] == [
        review.id for review in reviews
    ]
    # A third time in pages of two objects, one page per activity and three activities per workflow
    # run: the cursors and continue-as-new carry the fetch; the result is the same.
    paged = await reconcile_in_small_pages(stack, window_start, int(run.window_end.timestamp()))
    assert paged.counts == run.counts
    assert [item.id for item in await run_items(stack.engine, paged.id)] == [item.id for item in items]
    async with stack.engine.connect() as connection:
        opened = (
            await connection.execute(
                text("SELECT count(*) FROM review_items WHERE kind = :kind AND id = ANY(:ids)"),
                {"kind": REVIEW_KIND, "ids": [item.review_item_id for item in items]},
            )
        ).scalar_one()
    assert opened == 7


async def reconcile_in_small_pages(stack: PaymentStack, window_start_unix: int, window_end_unix: int) -> Any:
    settings = stack.settings.model_copy(
        update={"reconciliation_page_size": 2, "temporal_task_queue": f"{stack.task_queue}-paged"}
    )
    run_id = new_run_id()
    worker = build_worker(stack.client, stack.engine, settings, task_queue=settings.temporal_task_queue)
    async with worker:
        handle = await stack.client.start_workflow(
            ReconciliationWorkflow.run,
            ReconciliationInput(
                run_id=run_id,
                window_start_unix=window_start_unix,
                window_end_unix=window_end_unix,
                trigger="api",
                pages_per_activity=1,
                fetch_calls_per_run=3,
            ),
            id=reconciliation_workflow_id(run_id),
            task_queue=settings.temporal_task_queue,
        )
        await handle.result()
        first = stack.client.get_workflow_handle(handle.id, run_id=handle.first_execution_run_id)
        assert (await first.describe()).status == WorkflowExecutionStatus.CONTINUED_AS_NEW
        # The workflow code replays its own history (determinism).
        await Replayer(workflows=[ReconciliationWorkflow], workflow_runner=workflow_runner()).replay_workflow(
            await first.fetch_history()
        )
    return await run_row(stack.engine, run_id)


async def test_a_missed_webhook_for_a_succeeded_payment_intent_is_repaired(
    stack: PaymentStack, window_start: int, emulator_stripe: stripe.StripeClient
) -> None:
    payment = new_order(capture_method="manual")
    _, handle = await start(stack, payment)
    authorized = await wait_for_status(handle, "AUTHORIZED")
    # Captured at Stripe behind Penny's back: the payment_intent.succeeded webhook never arrives.
    emulator_stripe.v1.payment_intents.capture(authorized.stripe_payment_intent_id or "")

    run = await reconcile(stack, window_start)

    [item] = await run_items(stack.engine, run.id)
    assert (class_of(item), item.item_key, item.payment_id) == (
        "penny_missing_or_not_captured",
        authorized.stripe_payment_intent_id,
        authorized.payment_id,
    )
    assert item.penny_values["status"] == "AUTHORIZED"
    assert item.repair == (f"signalled payment-{payment.order_id} with payment_intent.succeeded (run {run.id})")
    assert run.repaired == 1
    captured = await wait_for_status(handle, "CAPTURED", "SETTLED")
    assert captured.amount_captured == payment.amount
    # Disbursed as the normal path does (its transfers booked before the next window starts).
    await disbursed(handle)


async def test_the_schedule_exists_after_worker_start_and_runs_when_triggered(
    temporal_client: Client, database_url: str, private_emulator: Any, engine: AsyncEngine
) -> None:
    # The real worker process (`python worker.py`), configured from the environment as deployed.
    task_queue = f"test-schedule-{uuid.uuid4().hex[:12]}"
    environment = {
        **os.environ,
        "PENNY_ENV": "test",
        "DATABASE_URL": database_url,
        "TEMPORAL_ADDRESS": temporal_client.service_client.config.target_host,
        "TEMPORAL_NAMESPACE": temporal_client.namespace,
        "TEMPORAL_TASK_QUEUE": task_queue,
        "STRIPE_API_BASE": private_emulator.base_url,
        "PENNY_WORKER_METRICS_PORT": "0",
        "PENNY_WORKER_TEMPORAL_METRICS_PORT": "0",
        "PENNY_RECONCILIATION_TIME": "04:30",
        "PENNY_RECONCILIATION_TIMEZONE": "Europe/Paris",
    }
    process = await asyncio.create_subprocess_exec(
        sys.executable, "worker.py", cwd=str(REPO), env=environment, stdout=DEVNULL, stderr=DEVNULL
    )
    handle = temporal_client.get_schedule_handle(schedule_id(task_queue))
    try:
        described = await schedule_described(handle, process)
        [calendar] = described.schedule.spec.calendars
        assert (calendar.hour[0].start, calendar.minute[0].start) == (4, 30)
        assert described.schedule.spec.time_zone_name == "Europe/Paris"
        assert described.schedule.policy.overlap == ScheduleOverlapPolicy.SKIP
        assert described.schedule.policy.catchup_window == timedelta(days=1)
        # A second start (another worker, a deploy) finds it and brings it to its settings.
        settings = Settings(
            env="test",
            database_url=database_url,
            temporal_task_queue=task_queue,
            reconciliation_time="05:15",
            reconciliation_timezone="Europe/Paris",
        )
        assert await ensure_reconciliation_schedule(temporal_client, settings) == schedule_id(task_queue)
        [calendar] = (await handle.describe()).schedule.spec.calendars
        assert (calendar.hour[0].start, calendar.minute[0].start) == (5, 15)

        await handle.trigger()
        run = await scheduled_run(engine, f"reconciliation-scheduled-{task_queue}")
        # The day before today in Paris: one whole local day (23 to 25 hours around a DST change).
        assert run.trigger == "schedule" and run.status == "completed"
        assert 23 * 3600 <= (run.window_end - run.window_start).total_seconds() <= 25 * 3600
        assert run.window_end.timestamp() <= time.time()
        assert run.counts == zero_counts()
    finally:
        await handle.delete()
        process.terminate()
        await process.wait()


async def schedule_described(handle: Any, process: asyncio.subprocess.Process) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            return await handle.describe()
        except RPCError:
            assert process.returncode is None, f"the worker exited with {process.returncode}"
            assert time.monotonic() < deadline, "the worker created no reconciliation Schedule"
            await asyncio.sleep(0.2)


async def scheduled_run(engine: AsyncEngine, workflow_id_prefix: str) -> Any:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        async with engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT * FROM reconciliation_runs WHERE trigger = 'schedule' AND status = 'completed' "
                        "AND workflow_id LIKE :prefix"
                    ),
                    {"prefix": workflow_id_prefix + "%"},
                )
            ).first()
        if row is not None:
            return row
        assert time.monotonic() < deadline, f"no completed scheduled run {workflow_id_prefix}"
        await asyncio.sleep(0.2)


async def dispute_of_charge(stack: PaymentStack, charge_id: str) -> str:
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        disputes = stack.emulator.control.state(["disputes"])["disputes"]
        found = [dispute["id"] for dispute in disputes if dispute["charge"] == charge_id]
        if found:
            return str(found[0])
        assert time.monotonic() < deadline, "the emulator opened no dispute"
        await asyncio.sleep(0.1)


async def review_items_of(engine: AsyncEngine, ids: list[int]) -> list[Any]:
    async with engine.connect() as connection:
        return list(
            await connection.execute(text("SELECT * FROM review_items WHERE id = ANY(:ids) ORDER BY id"), {"ids": ids})
        )


@pytest.fixture(autouse=True)
def _no_leaked_faults(private_emulator: Any) -> Iterator[None]:
    yield
    private_emulator.control.clear_faults()


async def test_refund_fee_currency_transfer_and_settlement_mismatches_are_each_found_once(
    stack: PaymentStack, window_start: int, emulator_stripe: stripe.StripeClient
) -> None:
    control = stack.emulator.control
    # A refund Penny booked that Stripe then failed (its webhook never arrives).
    failed = await paid(stack, new_order())
    failed_refund = await refunded(stack, failed, 1000)
    control.fail_refund(failed_refund.stripe_refund_id)
    # A refund whose amount Stripe's state changed.
    shrunk = await paid(stack, new_order())
    shrunk_refund = await refunded(stack, shrunk, 500)
    emulator_object(stack, shrunk_refund.stripe_refund_id)["amount"] = 400
    # Stripe's processing fee changed after Penny booked it.
    fee = await paid(stack, new_order())
    charge = emulator_object(stack, fee.stripe_charge_id or "")
    emulator_object(stack, str(charge["balance_transaction"]))["fee"] += 5
    # The PaymentIntent's currency changed.
    currency = await paid(stack, new_order())
    emulator_object(stack, currency.stripe_payment_intent_id or "")["currency"] = "eur"
    # A transfer made at Stripe for a Penny payment, to a recipient Penny never paid.
    extra_transfer = await paid(stack, new_order())
    stranger_account = f"acct_{uuid.uuid4().hex[:10]}"
    emulator_stripe.v1.transfers.create(
        {
            "amount": 300,
            "currency": "usd",
            "destination": stranger_account,
            "transfer_group": extra_transfer.order_id,
            "metadata": {"payment_id": extra_transfer.payment_id},
        }
    )
    # A transfer Penny booked to one recipient that Stripe shows paid to another.
    moved = await paid(stack, new_order())
    [moved_recipient] = [record.account_id for record in moved.transfers]
    moved_to = f"acct_{uuid.uuid4().hex[:10]}"
    moved_charge = emulator_object(stack, moved.stripe_charge_id or "")
    emulator_object(stack, str(moved_charge["transfer"]))["destination"] = moved_to
    # Funds Stripe made available two days ago that Penny still waits for.
    late = await paid(stack, new_order())
    late_charge = emulator_object(stack, late.stripe_charge_id or "")
    late_transaction = emulator_object(stack, str(late_charge["balance_transaction"]))
    late_transaction["available_on"] = int(late_transaction["created"]) - 2 * 86_400

    run = await reconcile(stack, window_start)

    items = await run_items(stack.engine, run.id)
    assert sorted((class_of(item), item.item_key) for item in items) == sorted(
        [
            ("refund_missing_at_stripe", failed_refund.id),
            ("refund_amount_mismatch", shrunk_refund.id),
            ("fee_mismatch", fee.stripe_payment_intent_id),
            ("currency_mismatch", currency.stripe_payment_intent_id),
            ("transfer_missing_in_penny", f"{extra_transfer.payment_id}:{stranger_account}"),
            ("transfer_missing_at_stripe", f"{moved.payment_id}:{moved_recipient}"),
            ("transfer_missing_in_penny", f"{moved.payment_id}:{moved_to}"),
            ("settlement_late", late.stripe_payment_intent_id),
        ]
    )
    by_key = {item.item_key: item for item in items}
    assert by_key[shrunk_refund.id].stripe_values == {
        "refund": shrunk_refund.stripe_refund_id,
        "amount": 400,
        "currency": "USD",
    }
    assert by_key[shrunk_refund.id].penny_values == {"refund_id": shrunk_refund.id, "amount": 500, "currency": "USD"}
    fee_item = by_key[fee.stripe_payment_intent_id or ""]
    assert fee_item.stripe_values["fee"] == fee_item.penny_values["processing_fee"] + 5
    assert by_key[f"{extra_transfer.payment_id}:{stranger_account}"].stripe_values["net"] == 300
    assert run.counts[MATCHED] + run.counts["fee_mismatch"] > 0
    assert sum(count for name, count in run.counts.items() if name != MATCHED) == 8


async def refunded(stack: PaymentStack, payment: PaymentState, amount: int) -> Any:
    """A refund through the payment workflow (as the API makes it), confirmed by Stripe; its row."""
    handle = stack.client.get_workflow_handle(f"payment-{payment.order_id}")
    record = await refund(handle, refund_request(amount))
    await refund_done(handle, record.refund_id)
    async with stack.engine.connect() as connection:
        return (await connection.execute(text("SELECT * FROM refunds WHERE id = :id"), {"id": record.refund_id})).one()


async def test_a_payout_that_does_not_equal_its_balance_transactions_is_found(
    temporal_client: Client,
    engine: AsyncEngine,
    database_url: str,
    emulator_factory: Any,
    task_queue: str,
    window_start: int,
) -> None:
    # Its own emulator: the clock is advanced (settlement, then the daily automatic payout).
    payouts_emulator = emulator_factory()
    settings = stack_settings(temporal_client, database_url, task_queue, payouts_emulator)
    client = stripe.StripeClient(
        api_key="sk_test_penny_payouts",
        base_addresses={"api": payouts_emulator.base_url},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=30),
    )
    # Its clock starts at real time: the window starts with this test (Penny's side is real time).
    window_start_unix = min(window_start, int(payouts_emulator.control.clock()["now"]))
    intents = [
        client.v1.payment_intents.create(
            {"amount": amount, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
        )
        for amount in (5000, 7000)
    ]
    payouts_emulator.control.advance_clock(3 * 86_400)
    [payout] = [found for found in payouts_emulator.control.state(["payouts"])["payouts"] if found["automatic"]]
    assert payout["amount"] == sum(intent.amount - (intent.amount * 29 + 500) // 1000 - 30 for intent in intents)
    payouts_emulator.app.state.objects[payout["id"]]["amount"] += 1
    window_end_unix = int(payouts_emulator.control.clock()["now"]) + 1

    async with running_stack(temporal_client, engine, settings, payouts_emulator) as stack:
        run = await reconcile(stack, window_start_unix, window_end_unix)

    items = await run_items(engine, run.id)
    assert sorted((class_of(item), item.item_key) for item in items) == sorted(
        [("payout_mismatch", payout["id"])] + [("penny_missing_or_not_captured", intent.id) for intent in intents]
    )
    [payout_item] = [item for item in items if class_of(item) == "payout_mismatch"]
    assert payout_item.stripe_values["amount"] == payout["amount"] + 1
    assert payout_item.stripe_values["balance_transactions_net"] == payout["amount"]
    assert payout_item.stripe_values["balance_transactions"] == 2


async def test_ops_run_it_from_the_api_and_the_cli_and_read_the_report_html_and_csv(
    stack: PaymentStack,
    window_start: int,
    emulator_stripe: stripe.StripeClient,
    capsys: pytest.CaptureFixture[str],
) -> None:
    payment = await paid(stack, new_order())
    stripe_refund = emulator_stripe.v1.refunds.create(
        {"payment_intent": payment.stripe_payment_intent_id or "", "amount": 1234}
    )
    window_end = int(time.time()) + 1
    await asyncio.sleep(window_end - time.time())
    _last_window_end[0] = window_end
    ops = await new_key(stack.engine, stack.settings, "ops")
    async with api_client(stack.settings, stack.client) as http:
        started = await http.post(
            "/v1/reconciliation/runs",
            json={"window_start": window_start, "window_end": window_end},
            headers=auth(ops, f"recon-{uuid.uuid4().hex}"),
        )
        assert started.status_code == 200, started.text
        run = started.json()
        assert (run["status"], run["trigger"], run["window_start"], run["window_end"]) == (
            "running",
            "api",
            window_start,
            window_end,
        )
        await stack.client.get_workflow_handle(run["workflow_id"]).result()

        finished = (await http.get(f"/v1/reconciliation/runs/{run['id']}", headers=auth(ops))).json()
        assert finished["status"] == "completed"
        assert finished["counts"] == zero_counts(matched=2, refund_missing_in_penny=1)
        assert finished["mismatches"] == 1
        [item] = (await http.get(f"/v1/reconciliation/runs/{run['id']}/items", headers=auth(ops))).json()["data"]
        assert (item["class"], item["item_key"], item["payment_id"]) == (
            "refund_missing_in_penny",
            stripe_refund.id,
            payment.payment_id,
        )
        assert (item["stripe"]["amount"], item["stripe"]["currency"], item["penny"]["amount_refunded"]) == (
            1234,
            "USD",
            0,
        )
        review = (await http.get(f"/v1/reviews/{item['review_id']}", headers=auth(ops))).json()
        assert (review["kind"], review["status"], review["payment"]) == (REVIEW_KIND, "open", payment.payment_id)
        assert review["details"]["class"] == "refund_missing_in_penny"
        assert review["details"]["stripe"]["refund"] == stripe_refund.id
        listed = await http.get("/v1/reviews", params={"kind": REVIEW_KIND, "limit": 100}, headers=auth(ops))
        assert item["review_id"] in [found["id"] for found in listed.json()["data"]]
        # An operator settles it (the payment is not in review: the item alone is resolved).
        resolved = await http.post(
            f"/v1/reviews/{item['review_id']}/resolve",
            json={"action": "acknowledged", "note": "refunded at Stripe by support; booked by hand"},
            headers=auth(ops, f"resolve-{uuid.uuid4().hex}"),
        )
        assert (resolved.status_code, resolved.json()["status"]) == (200, "resolved"), resolved.text

        report = await http.get(f"/v1/reconciliation/runs/{run['id']}/report", headers=auth(ops))
        assert report.status_code == 200 and report.headers["content-type"].startswith("text/html")
        page = report.text
        assert "<svg" in page and "refund_missing_in_penny" in page and stripe_refund.id in page
        assert "<script" not in page and "src=" not in page and "https://" not in page  # nothing from a CDN

        exported = await http.get(f"/v1/reconciliation/runs/{run['id']}/items.csv", headers=auth(ops))
        lines = exported.text.splitlines()
        assert lines[0].split(",")[:5] == ["run_id", "window_start", "window_end", "class", "item_key"]
        assert len(lines) == 2 and lines[1].startswith(f"{run['id']},{window_start},{window_end},")

        merchant = await new_key(stack.engine, stack.settings, "merchant")
        refused = await http.get(f"/v1/reconciliation/runs/{run['id']}/report", headers=auth(merchant))
        assert refused.status_code == 403

    # The CLI: the same window again finds the same item (no duplicate), then its report.
    capsys.readouterr()
    assert await run_cli(stack.settings, "reconcile", "--from", str(window_start), "--to", str(window_end)) == 0
    printed = capsys.readouterr().out
    assert f"[refund_missing_in_penny] {stripe_refund.id}  review {item['review_id']}" in printed
    assert "refund_missing_in_penny                1" in printed.replace("  ", "  ")
    cli_run = printed.split()[3]
    assert [found.id for found in await run_items(stack.engine, cli_run)] == [item["id"]]
    assert await run_cli(stack.settings, "reconcile", "report", run["id"]) == 0
    assert f"Reconciliation run {run['id']} (completed, api by api:test ops" in capsys.readouterr().out
    assert await run_cli(stack.settings, "reconcile", "report", "recon_" + "z" * 24) == 1
    assert "no reconciliation run" in capsys.readouterr().err


async def test_a_retried_fetch_resumes_after_the_cursor_it_heartbeated(
    stack: PaymentStack, window_start: int, emulator_stripe: stripe.StripeClient
) -> None:
    for amount in (1100, 1200, 1300, 1400, 1500):
        emulator_stripe.v1.payment_intents.create(
            {"amount": amount, "currency": "usd", "payment_method": "pm_card_visa", "confirm": True}
        )
    window_end = int(time.time()) + 1
    await asyncio.sleep(window_end - time.time())
    _last_window_end[0] = window_end
    settings = stack.settings.model_copy(update={"reconciliation_page_size": 2, "reconciliation_margin_seconds": 0})
    activities = ReconciliationActivities(stack.engine, settings, stack.client)
    run_id = new_run_id()
    environment = ActivityEnvironment()
    await environment.run(
        activities.start_run,
        StartRunInput(run_id, "cli", "test", "test", window_start_unix=window_start, window_end_unix=window_end),
    )
    newest_first = [
        intent.id
        for intent in emulator_stripe.v1.payment_intents.list(
            {"created": {"gte": window_start, "lt": window_end}, "limit": 10}
        ).data
    ]
    assert len(newest_first) == 5
    # The first attempt staged one page (two objects) and heartbeated its last id, then was lost.
    heartbeats: list[Any] = []
    environment.on_heartbeat = lambda *details: heartbeats.append(details)
    first = await environment.run(
        activities.fetch_pages, FetchPagesInput(run_id, "payment_intent", window_start, window_end, pages_max=1)
    )
    assert (first.fetched, first.next_cursor) == (2, newest_first[1])
    # Its retry gets the heartbeat details, not the input's cursor: it goes on from there.
    environment.info = dataclasses.replace(environment.info, heartbeat_details=[newest_first[1]])
    heartbeats.clear()
    rest = await environment.run(
        activities.fetch_pages, FetchPagesInput(run_id, "payment_intent", window_start, window_end, pages_max=10)
    )
    assert (rest.fetched, rest.next_cursor) == (3, None)
    assert heartbeats == [(newest_first[3],)]
    async with stack.engine.connect() as connection:
        staged = (
            (
                await connection.execute(
                    text(
                        "SELECT stripe_id FROM reconciliation_stripe_objects "
                        "WHERE run_id = :run_id AND object_type = 'payment_intent'"
                    ),
                    {"run_id": run_id},
                )
            )
            .scalars()
            .all()
        )
    assert sorted(staged) == sorted(newest_first)
    # The same page again (a retry after a commit it did not heartbeat) stages nothing twice.
    environment.info = dataclasses.replace(environment.info, heartbeat_details=[newest_first[1]])
    again = await environment.run(
        activities.fetch_pages, FetchPagesInput(run_id, "payment_intent", window_start, window_end, pages_max=10)
    )
    assert again.fetched == 3
    async with stack.engine.connect() as connection:
        count = (
            await connection.execute(
                text("SELECT count(*) FROM reconciliation_stripe_objects WHERE run_id = :run_id"), {"run_id": run_id}
            )
        ).scalar_one()
    assert count == 5
