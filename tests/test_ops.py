"""The on-call views on the real stack: the worker's ops gauges (scraped over HTTP from the
exporter the worker starts), `penny status` and `penny ops stuck`.

A payment is driven into NEEDS_REVIEW through the API with Stripe's charge lookups failing
(as in tests/test_reviews.py); the gauges must move by exactly that payment, and the CLI views
must name it.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Iterator

import httpx
import pytest
import pytest_asyncio
from prometheus_client import start_http_server
from prometheus_client.parser import text_string_to_metric_families
from temporalio.client import Client
from temporalio.worker import Worker

from activities.health import HealthActivities
from penny import ops_cli
from penny.ops_monitor import monitor_once
from penny.services import free_port
from penny.settings import Settings
from penny.temporal_runtime import worker_runtime
from tests.payment_fixtures import FAST_TIMINGS, PaymentStack
from tests.test_api_support import api_client, run_cli
from tests.test_fault_paths import dispute_of, signal_dispute
from tests.test_payment_workflow import new_order, start, wait_for_status
from tests.test_refunds import (
    disbursed,
    refund,
    refund_done,
    refund_request,
    stripe_refunds,
    three_way_order,
)
from tests.test_reviews import Key, key_with_role, payment_in_review
from workflows.health import HealthCheckInput, HealthCheckWorkflow
from workflows.payment_models import SIGNAL_STRIPE_EVENT, StripeEventSignal

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@pytest_asyncio.fixture(loop_scope="session")
async def http(payment_stack: PaymentStack) -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(payment_stack.settings, payment_stack.client, FAST_TIMINGS) as client:
        yield client


@pytest_asyncio.fixture(loop_scope="session")
async def merchant(payment_stack: PaymentStack) -> Key:
    return await key_with_role(payment_stack, "merchant")


@pytest.fixture(scope="module")
def exporter() -> Iterator[str]:
    """The worker's Prometheus exporter (worker.py starts the same one on PENNY_WORKER_METRICS_PORT)."""
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1")
    yield f"http://127.0.0.1:{port}/metrics"
    server.shutdown()
    thread.join(5)


async def scrape(url: str) -> Samples:
    async with httpx.AsyncClient(timeout=10) as client:
        response = await client.get(url)
    assert response.status_code == 200
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_a_payment_entering_review_moves_the_gauges_by_exactly_one(
    exporter: str, http: httpx.AsyncClient, merchant: Key, payment_stack: PaymentStack
) -> None:
    settings = payment_stack.settings
    before_snapshot = await monitor_once(payment_stack.engine, settings, with_ledger=True)
    before = await scrape(exporter)
    payment, _, _ = await payment_in_review(http, merchant, payment_stack)
    try:
        after_snapshot = await monitor_once(payment_stack.engine, settings, with_ledger=True)
        after = await scrape(exporter)
    finally:
        payment_stack.emulator.control.clear_faults()
    # What was exported is what was read, exactly.
    for status, count in after_snapshot.payments_by_status.items():
        assert value(after, "penny_payments", status=status) == count
    for kind, count in after_snapshot.review_open_by_kind.items():
        assert value(after, "penny_review_queue_depth", kind=kind) == count
    # The payment: one more in NEEDS_REVIEW, one more open `step_failed` item.
    assert (
        value(after, "penny_payments", status="NEEDS_REVIEW") - value(before, "penny_payments", status="NEEDS_REVIEW")
        == 1
    )
    assert (
        value(after, "penny_review_queue_depth", kind="step_failed")
        - value(before, "penny_review_queue_depth", kind="step_failed")
        == 1
    )
    assert before_snapshot.ledger is not None and after_snapshot.ledger is not None
    # The ledger verifies, and every finding code is exported at 0 (an alert fires on any other value).
    assert after_snapshot.ledger.ok, after_snapshot.ledger.examples
    assert value(after, "penny_ledger_verify_findings", code="unbalanced_entry") == 0
    assert ("penny_ledger_verify_findings", (("code", "balance_mismatch"),)) in after
    assert (
        value(after, "penny_ledger_verify_last_run_timestamp_seconds")
        >= after_snapshot.ledger.checked_at.timestamp() - 1
    )
    assert payment["status"] == "captured"


async def test_status_and_ops_stuck_name_a_payment_in_review(
    http: httpx.AsyncClient, merchant: Key, payment_stack: PaymentStack, capsys: pytest.CaptureFixture[str]
) -> None:
    payment, handle, _ = await payment_in_review(http, merchant, payment_stack)
    payment_stack.emulator.control.clear_faults()
    settings = payment_stack.settings
    # The test stack runs no API process on PENNY_API_PORT: status reports it down and exits 1.
    assert await run_cli(settings, "status") == 1
    shown = capsys.readouterr().out
    assert re.search(r"^  ✓ postgres  +PostgreSQL ", shown, re.MULTILINE), shown
    assert re.search(r"^  ✓ worker  +\d+ polling task queue ", shown, re.MULTILINE), shown
    assert re.search(r"^  ✗ api  ", shown, re.MULTILINE), shown
    assert re.search(r"^review queue    \d+ open: .*step_failed \d+", shown, re.MULTILINE), shown
    assert "ledger          verify ok" in shown
    # Temporal's visibility is eventually consistent: the search attribute shows up within seconds.
    for _ in range(50):
        assert await run_cli(settings, "ops", "stuck", "--order", payment["order_id"]) == 0
        listed = capsys.readouterr().out
        if handle.id in listed:
            break
        await asyncio.sleep(0.2)
    [row] = [line.split() for line in listed.splitlines() if handle.id in line]
    assert row[:4] == ["needs_review", handle.id, payment["order_id"], "NEEDS_REVIEW"]
    assert row[4:6] == [str(payment["amount"]), "USD"]  # the search attributes spell currencies upper case


def test_stuck_queries_are_the_readme_ones() -> None:
    from datetime import UTC, datetime

    queries = dict(
        ops_cli.stuck_queries(
            Settings(stuck_after_seconds=3600), datetime(2026, 11, 22, 12, 0, tzinfo=UTC), customer='c"x'
        )
    )
    assert queries == {
        "stuck": 'ExecutionStatus = "Running" AND PaymentStatus IN ("CREATED", "PROCESSING") '
        'AND StartTime < "2026-11-22T11:00:00Z" AND CustomerId = "c\\"x"',
        "needs_review": 'ExecutionStatus = "Running" AND PaymentStatus = "NEEDS_REVIEW" AND CustomerId = "c\\"x"',
        "disputed": 'ExecutionStatus = "Running" AND PaymentStatus = "DISPUTED" AND CustomerId = "c\\"x"',
    }


# ----------------------------------------------------------------------------- outcome counters


async def test_a_decline_is_counted_by_its_reason(exporter: str, payment_stack: PaymentStack) -> None:
    before = await scrape(exporter)
    state, _ = await start(payment_stack, new_order(payment_method="pm_card_chargeDeclinedInsufficientFunds"))
    assert state.status == "FAILED"
    after = await scrape(exporter)
    failures = "penny_payment_failures_total"
    assert (
        value(after, failures, reason="insufficient_funds") - value(before, failures, reason="insufficient_funds") == 1
    )
    assert value(after, failures, reason="other") == value(before, failures, reason="other")


async def test_a_processor_timeout_is_counted_as_an_ambiguous_outcome(
    exporter: str, payment_stack: PaymentStack
) -> None:
    """Stripe commits the PaymentIntent and the answer never arrives: one timeout, one ambiguous outcome."""
    before = await scrape(exporter)
    payment_stack.emulator.control.add_fault("POST", "/v1/payment_intents", "timeout_after", count=1, latency_seconds=1)
    state, handle = await start(payment_stack, new_order())
    await wait_for_status(handle, "CAPTURED", "SETTLED")
    after = await scrape(exporter)
    create = {"operation": "payment intent create"}
    errors, ambiguous = "penny_stripe_errors_total", "penny_stripe_ambiguous_outcomes_total"
    assert value(after, errors, kind="timeout", **create) - value(before, errors, kind="timeout", **create) == 1
    assert value(after, ambiguous, **create) - value(before, ambiguous, **create) == 1


async def test_a_failed_refund_and_a_lost_dispute_are_counted(exporter: str, payment_stack: PaymentStack) -> None:
    refunds, disputes = "penny_refunds_total", "penny_disputes_total"
    before = await scrape(exporter)
    # A refund Stripe fails after accepting it.
    payment = new_order(payment_method="pm_card_refundFail")
    state, handle = await start(payment_stack, payment)
    await disbursed(handle)
    made = await refund(handle, refund_request(1000))
    await refund_done(handle, made.refund_id)
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
    await wait_for_status(handle, "NEEDS_REVIEW")
    # A dispute opened and lost.
    disputed_payment = three_way_order(payment_method="pm_card_createDispute")
    disputed_state, disputed_handle = await start(payment_stack, disputed_payment)
    await disbursed(disputed_handle)
    dispute = await dispute_of(payment_stack, disputed_state.stripe_payment_intent_id)
    await signal_dispute(disputed_handle, dispute, "charge.dispute.created")
    await wait_for_status(disputed_handle, "DISPUTED")
    payment_stack.emulator.control.close_dispute(dispute["id"], "lost")
    await signal_dispute(disputed_handle, dispute, "charge.dispute.closed")
    await asyncio.wait_for(disputed_handle.result(), 60)
    after = await scrape(exporter)
    # The refund succeeded at first (counted once), then Stripe failed it (counted once).
    assert value(after, refunds, status="succeeded") - value(before, refunds, status="succeeded") == 1
    assert value(after, refunds, status="failed") - value(before, refunds, status="failed") == 1
    assert value(after, disputes, outcome="opened") - value(before, disputes, outcome="opened") == 1
    assert value(after, disputes, outcome="lost") - value(before, disputes, outcome="lost") == 1
    assert value(after, disputes, outcome="closed_without_loss") == value(
        before, disputes, outcome="closed_without_loss"
    )


# ----------------------------------------------------------------------------- the SDK's own metrics


async def test_the_workers_temporal_sdk_metrics_are_scraped(payment_stack: PaymentStack) -> None:
    """The worker's runtime (penny/temporal_runtime.py) exports the SDK's metrics: after one
    workflow ran, its workflow and activity task counters are there for Prometheus."""
    port = free_port()
    settings = payment_stack.settings.model_copy(update={"worker_temporal_metrics_port": port})
    runtime = worker_runtime(settings)
    assert (
        runtime is not None and worker_runtime(settings.model_copy(update={"worker_temporal_metrics_port": 0})) is None
    )
    client = await Client.connect(
        payment_stack.client.service_client.config.target_host,
        namespace=payment_stack.client.namespace,
        runtime=runtime,
    )
    task_queue = f"sdk-metrics-{uuid.uuid4().hex[:8]}"
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[HealthCheckWorkflow],
        activities=[HealthActivities(payment_stack.engine).record_heartbeat],
    ):
        result = await client.execute_workflow(
            HealthCheckWorkflow.run,
            HealthCheckInput(source="sdk-metrics-test"),
            id=f"health-{task_queue}",
            task_queue=task_queue,
        )
        assert result.source == "sdk-metrics-test"
        samples = await scrape(f"http://127.0.0.1:{port}/metrics")
    completed = {
        name: count
        for (name, labels), count in samples.items()
        if dict(labels).get("task_queue") == task_queue
        and name in ("temporal_workflow_completed_total", "temporal_activity_execution_latency_seconds_count")
    }
    assert completed == {"temporal_workflow_completed_total": 1, "temporal_activity_execution_latency_seconds_count": 1}
