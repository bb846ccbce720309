"""The chaos soak's invariant checks (penny/chaos_checks.py) on the real stack, then with faults
planted one by one: each must be found, under the right invariant and with the right order id.

Real components: the payment worker (payment_stack), the Penny API under uvicorn registered at
the shared emulator as a webhook endpoint, the emulator over HTTP, Postgres, Temporal. The
emulator and Temporal are shared with the rest of the session, so the checks get this module's
orders (per-order checks), this module's webhook endpoint and `workflows_of_orders_only`; the
database is this module's own, so the global database checks (ledger, card numbers) stay global.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import stripe
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from penny.chaos_checks import (
    IDEMPOTENCY_KEYS_CONSISTENT,
    INVARIANT_NAMES,
    LEDGER_BALANCED,
    MONEY_MATCHES,
    NO_CARD_NUMBERS,
    NO_FAILED_WORKFLOWS,
    NOTHING_STUCK,
    ONE_CHARGE_PER_ORDER,
    VIOLATION_EXAMPLES_MAX,
    WEBHOOKS_ACCOUNTED,
    ClientRecord,
    InvariantResult,
    Violation,
    card_number_lines,
    check_invariants,
    check_no_failed_workflows,
    check_one_charge_per_order,
    format_report,
    idempotency_conflicts,
    money_differences,
)
from penny.services import free_port
from penny.settings import Settings
from stripe_emulator.control import AsyncEmulatorControl
from tests.payment_fixtures import PaymentStack
from tests.test_payment_workflow import new_order, settle, start
from tests.test_webhooks import RunningApi, fast_webhook_settings, start_api
from workflows.payment_models import UPDATE_CAPTURE, CaptureRequest, PaymentState, SplitRecipientSpec

CARD_NUMBER = "4242424242424242"
WEBHOOKS_IDLE_TIMEOUT_SECONDS = 20.0
VISIBILITY_TIMEOUT_SECONDS = 10.0


@dataclass
class PennyApi:
    api: RunningApi
    endpoint_id: str


@pytest.fixture(scope="module")
def penny_api(database_url: str, temporal_client: Client, stripe_emulator: Any) -> Iterator[PennyApi]:
    """This module's API, registered at the shared emulator for every event (deleted afterwards)."""
    port = free_port()
    http = httpx.Client(base_url=stripe_emulator.base_url, headers={"Authorization": "Bearer sk_test_chaos_checks"})
    created = http.post(
        "/v1/webhook_endpoints", data={"url": f"http://127.0.0.1:{port}/webhooks/stripe", "enabled_events[]": "*"}
    )
    assert created.status_code == 200, created.text
    endpoint = created.json()
    settings = fast_webhook_settings(
        Settings(
            env="test",
            database_url=database_url,
            temporal_address=temporal_client.service_client.config.target_host,
            temporal_namespace=temporal_client.namespace,
            stripe_api_base=stripe_emulator.base_url,
            stripe_webhook_secrets=endpoint["secret"],
        )
    )
    api = start_api(settings, port)
    try:
        yield PennyApi(api, endpoint["id"])
    finally:
        http.delete(f"/v1/webhook_endpoints/{endpoint['id']}")
        http.close()
        api.stop()


def by_name(results: list[InvariantResult]) -> dict[str, InvariantResult]:
    assert [result.name for result in results] == list(INVARIANT_NAMES)
    return {result.name: result for result in results}


def orders_named(result: InvariantResult) -> set[str | None]:
    return {violation.order_id for violation in result.violations}


async def wait_for_visibility(stack: PaymentStack, order_id: str) -> None:
    """Until Temporal's visibility lists the order's terminated workflow."""
    deadline = asyncio.get_running_loop().time() + VISIBILITY_TIMEOUT_SECONDS
    while (await check_no_failed_workflows(stack.client, [order_id])).violation_count == 0:
        assert asyncio.get_running_loop().time() < deadline, "the terminated workflow never became visible"
        await asyncio.sleep(0.2)


def create_second_charge(emulator_url: str, order_id: str) -> str:
    client = stripe.StripeClient("sk_test_chaos_checks", base_addresses={"api": emulator_url}, max_network_retries=0)
    intent = client.v1.payment_intents.create(
        params={
            "amount": 500,
            "currency": "usd",
            "payment_method": "pm_card_visa",
            "confirm": True,
            "metadata": {"order_id": order_id},
        }
    )
    assert intent.status == "succeeded"
    return intent.id


async def run_checks(
    stack: PaymentStack, penny: PennyApi, logs_dir: Path, records: list[ClientRecord], order_ids: list[str]
) -> dict[str, InvariantResult]:
    control = AsyncEmulatorControl(stack.emulator.base_url)
    try:
        assert await control.wait_for_webhooks(timeout_seconds=WEBHOOKS_IDLE_TIMEOUT_SECONDS)
    finally:
        await control.aclose()
    results = await check_invariants(
        engine=stack.engine,
        emulator_url=stack.emulator.base_url,
        temporal=stack.client,
        logs_dir=logs_dir,
        client_records=records,
        order_ids=order_ids,
        webhook_endpoint_ids={penny.endpoint_id},
        workflows_of_orders_only=True,
    )
    print(format_report(results))
    return by_name(results)


async def settled_payments(stack: PaymentStack) -> list[PaymentState]:
    """Three payments to SETTLED: a destination charge, two transfers with tax, a manual partial capture."""
    single = new_order()
    several = new_order(
        amount=4999,
        tax_amount=400,
        recipients=[
            SplitRecipientSpec(f"acct_s{uuid.uuid4().hex[:8]}", share_bps=7000, role="seller"),
            SplitRecipientSpec(f"acct_d{uuid.uuid4().hex[:8]}", share_bps=3000, role="driver"),
        ],
    )
    manual = new_order(capture_method="manual", amount=10_000)
    started = await asyncio.gather(*(start(stack, payment) for payment in (single, several, manual)))
    assert [state.status for state, _ in started] == ["CAPTURED", "CAPTURED", "AUTHORIZED"]
    await started[2][1].execute_update(UPDATE_CAPTURE, CaptureRequest(amount=6000), result_type=PaymentState)
    finals = await asyncio.gather(*(settle(stack, handle) for _, handle in started))
    assert [state.status for state in finals] == ["SETTLED"] * 3
    return finals


async def test_a_clean_run_holds_and_each_planted_fault_is_found(
    payment_stack: PaymentStack, penny_api: PennyApi, tmp_path: Path
) -> None:
    stack = payment_stack
    settled = await settled_payments(stack)
    orders = [state.order_id for state in settled]
    records = [ClientRecord(f"key-{state.order_id}", state.order_id, state.payment_id, 200) for state in settled]
    logs_dir = tmp_path / "logs"
    logs_dir.mkdir()
    (logs_dir / "api.log").write_text(
        f"INFO payment {settled[0].payment_id} captured 9999 for {orders[0]}\n"
        f"INFO request {uuid.uuid4()} at 2026-11-22T10:11:12.123456+00:00\n"
    )

    clean = await run_checks(stack, penny_api, logs_dir, records, orders)
    assert all(result.ok for result in clean.values()), format_report(list(clean.values()))
    assert clean[ONE_CHARGE_PER_ORDER].checked == 3 and clean[MONEY_MATCHES].checked == 3
    assert clean[NOTHING_STUCK].checked == 6  # three rows and three answered payment ids
    assert clean[NO_FAILED_WORKFLOWS].checked == 3
    assert clean[WEBHOOKS_ACCOUNTED].checked > 0, "the payments' events reached Penny"
    assert clean[LEDGER_BALANCED].checked > 0 and clean[NO_CARD_NUMBERS].checked > 0
    assert clean[MONEY_MATCHES].explained == 0

    # Plant one fault per invariant the outside can break.
    charged, stuck_answer, terminated = orders[0], f"order_{uuid.uuid4().hex[:12]}", f"order_{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(create_second_charge, stack.emulator.base_url, charged)
    authorized, _ = await start(stack, new_order(capture_method="manual"))
    assert authorized.status == "AUTHORIZED"
    probe = await stack.client.start_workflow(
        "ChaosChecksProbe", id=f"payment-{terminated}", task_queue=f"chaos-probe-{uuid.uuid4()}"
    )
    await probe.terminate("planted by test_chaos_checks")
    await wait_for_visibility(stack, terminated)
    blocked = f"cus_{uuid.uuid4().hex[:8]}"
    async with stack.engine.begin() as connection:
        undelivered = (
            await connection.execute(
                text(
                    """
                    UPDATE webhook_events SET status = 'received', delivered_at = NULL
                     WHERE id = (SELECT min(id) FROM webhook_events WHERE payment_id = :payment_id)
                    RETURNING event_id
                    """
                ),
                {"payment_id": settled[1].payment_id},
            )
        ).scalar_one()
        await connection.execute(
            text("INSERT INTO risk_blocklist (kind, value, reason) VALUES ('customer', :value, :reason)"),
            {"value": blocked, "reason": f"card {CARD_NUMBER} seen"},
        )
    (logs_dir / "worker.log").write_text(f"INFO ok\nERROR card {CARD_NUMBER} in a request\n")
    planted_records = [
        *records,
        ClientRecord(f"key-{orders[1]}", orders[1], settled[2].payment_id, 200),
        ClientRecord(f"key-{authorized.order_id}", authorized.order_id, authorized.payment_id, 200),
        ClientRecord(f"key-{stuck_answer}", stuck_answer, "pay_neverstoredanywherexxx", 200),
    ]
    planted_orders = [*orders, authorized.order_id, terminated]

    found = await run_checks(stack, penny_api, logs_dir, planted_records, planted_orders)
    assert found[ONE_CHARGE_PER_ORDER].violation_count == 1 and orders_named(found[ONE_CHARGE_PER_ORDER]) == {charged}
    assert found[MONEY_MATCHES].violation_count == 1 and orders_named(found[MONEY_MATCHES]) == {charged}
    assert "captured: processor USD 10499 != ledger USD 9999" in found[MONEY_MATCHES].violations[0].detail
    assert orders_named(found[NOTHING_STUCK]) == {authorized.order_id, stuck_answer}
    assert found[NOTHING_STUCK].violation_count == 2
    assert orders_named(found[NO_FAILED_WORKFLOWS]) == {terminated}
    assert "TERMINATED" in found[NO_FAILED_WORKFLOWS].violations[0].detail
    assert found[WEBHOOKS_ACCOUNTED].violation_count == 1
    assert found[WEBHOOKS_ACCOUNTED].violations[0].order_id == orders[1]
    assert undelivered in found[WEBHOOKS_ACCOUNTED].violations[0].detail
    # The same key answered two payment ids, so did its order, and one is not the order's payment.
    assert found[IDEMPOTENCY_KEYS_CONSISTENT].violation_count == 3
    assert orders_named(found[IDEMPOTENCY_KEYS_CONSISTENT]) == {orders[1]}
    details = sorted(violation.detail for violation in found[NO_CARD_NUMBERS].violations)
    assert found[NO_CARD_NUMBERS].violation_count == 2
    assert details == ["log worker.log line 2: card number", details[1]]
    assert details[1] == f"public.risk_blocklist row kind=customer, value={blocked}: card number in reason"
    assert all(CARD_NUMBER not in violation.detail for violation in found[NO_CARD_NUMBERS].violations)
    assert found[LEDGER_BALANCED].ok
    report = format_report(list(found.values()))
    assert charged in report and CARD_NUMBER not in report

    # A review item on the payment turns its money difference into an explained one.
    async with stack.engine.begin() as connection:
        await connection.execute(
            text(
                "INSERT INTO review_items (payment_id, dedupe_key, kind, reason) "
                "VALUES (:payment_id, :key, 'chaos_probe', 'a second charge, reviewed')"
            ),
            {"payment_id": settled[0].payment_id, "key": f"chaos-probe:{settled[0].payment_id}"},
        )
        await connection.execute(
            text("UPDATE webhook_events SET status = 'delivered', delivered_at = now() WHERE event_id = :event_id"),
            {"event_id": undelivered},
        )
        await connection.execute(text("DELETE FROM risk_blocklist WHERE value = :value"), {"value": blocked})
    (logs_dir / "worker.log").unlink()
    explained = await run_checks(stack, penny_api, logs_dir, records, orders)
    assert explained[MONEY_MATCHES].ok and explained[MONEY_MATCHES].explained == 1
    assert explained[MONEY_MATCHES].explained_examples[0].order_id == charged
    assert not explained[ONE_CHARGE_PER_ORDER].ok, "a second charge stays a violation, reviewed or not"
    others = set(INVARIANT_NAMES) - {ONE_CHARGE_PER_ORDER}
    assert all(explained[name].ok for name in others), format_report(list(explained.values()))


# ----------------------------------------------------------------------------------- units


def test_examples_are_bounded_but_counts_exact() -> None:
    intents = [
        {"id": f"pi_{order}_{n}", "status": "succeeded", "amount_received": 100, "metadata": {"order_id": f"o{order}"}}
        for order in range(VIOLATION_EXAMPLES_MAX + 5)
        for n in range(2)
    ]
    intents.append({"id": "pi_held", "status": "requires_capture", "amount": 5, "metadata": {"order_id": "o_held"}})
    intents.append({"id": "pi_held_2", "status": "succeeded", "amount_received": 5, "metadata": {"order_id": "o_held"}})
    intents.append({"id": "pi_failed", "status": "canceled", "metadata": {"order_id": "o_ok"}})
    order_ids = [f"o{order}" for order in range(VIOLATION_EXAMPLES_MAX + 5)] + ["o_held", "o_ok"]
    result = check_one_charge_per_order(intents, order_ids)
    assert result.checked == VIOLATION_EXAMPLES_MAX + 7
    assert result.violation_count == VIOLATION_EXAMPLES_MAX + 6
    assert len(result.violations) == VIOLATION_EXAMPLES_MAX
    assert not result.ok
    assert check_one_charge_per_order(intents, ["o_ok", "o_elsewhere"]).ok


def test_one_key_or_order_with_two_payment_ids_is_a_violation() -> None:
    consistent = [ClientRecord("k1", "o1", "pay_a", 200), ClientRecord("k1", "o1", "pay_a", 200)]
    refused = [ClientRecord("k2", "o2", None, 400), ClientRecord("k3", "o2", None, 409)]
    assert idempotency_conflicts([*consistent, *refused], {"o1": "pay_a"}).ok
    split_key = idempotency_conflicts([*consistent, ClientRecord("k1", "o1", "pay_b", 200)], {"o1": "pay_a"})
    assert split_key.violation_count == 3 and {v.order_id for v in split_key.violations} == {"o1"}
    two_orders = idempotency_conflicts(
        [ClientRecord("k1", "o1", "pay_a", 200), ClientRecord("k2", "o1", "pay_b", 201)], {}
    )
    assert two_orders.violation_count == 1 and "2 payment ids" in two_orders.violations[0].detail


def test_money_differences_are_exact_per_quantity_and_currency() -> None:
    from collections import Counter

    processor = Counter({("captured", "USD"): 9999, ("transferred", "USD"): 8999})
    assert money_differences(processor, Counter(processor)) == []
    assert money_differences(Counter({("captured", "USD"): 0}), Counter()) == []
    off_by_one = Counter({("captured", "USD"): 9998, ("transferred", "USD"): 8999})
    assert money_differences(processor, off_by_one) == ["captured: processor USD 9999 != ledger USD 9998"]
    other_currency = Counter({("captured", "EUR"): 9999, ("transferred", "USD"): 8999})
    assert money_differences(processor, other_currency) == ["captured: processor USD 9999 != ledger EUR 9999"]


def test_card_numbers_in_logs_are_found_across_read_boundaries(tmp_path: Path) -> None:
    import gzip

    from penny import chaos_checks

    long_line = "x" * (chaos_checks.LOG_READ_CHARS - 5) + f" {CARD_NUMBER} end\n"
    path = tmp_path / "big.log"
    path.write_text("clean pay_abcdefghijklmnopqrstuvwx 2026-11-22\n" + long_line + "clean\n" + f"{CARD_NUMBER}")
    assert list(card_number_lines(path)) == [2, 4]
    packed = tmp_path / "old.log.gz"
    packed.write_bytes(gzip.compress(f"a\nb {CARD_NUMBER}\n".encode()))
    assert list(card_number_lines(packed)) == [2]
    ids_only = tmp_path / "ids.log"
    ids_only.write_text(f"pi_3N{CARD_NUMBER} acct_1234567890123456 {uuid.uuid4()}\n")
    assert list(card_number_lines(ids_only)) == []


def test_report_is_a_compact_table() -> None:
    results = [
        InvariantResult(ONE_CHARGE_PER_ORDER, 10, []),
        InvariantResult(
            MONEY_MATCHES,
            10,
            [Violation(MONEY_MATCHES, f"order_{n}", "captured: processor USD 2 != ledger USD 1") for n in range(5)],
            violation_count=7,
            explained=1,
        ),
        InvariantResult(NO_CARD_NUMBERS, 0, [], error="could not check: OSError: gone"),
    ]
    report = format_report(results)
    lines = report.splitlines()
    assert lines[0].split() == ["invariant", "checked", "violations", "explained", "examples"]
    assert lines[2].split()[:4] == [ONE_CHARGE_PER_ORDER, "10", "0", "0"]
    assert lines[3].split()[:5] == [MONEY_MATCHES, "10", "7", "1", "order_0:"]
    assert "order_2:" in report and "order_3:" not in report
    assert lines[-1] == f"FAILED: {MONEY_MATCHES}, {NO_CARD_NUMBERS}"
    assert results[2].violation_count == 0 and not results[2].ok


def test_no_violation_text_repeats_a_card_number() -> None:
    key = f"retry card {CARD_NUMBER}"
    result = idempotency_conflicts([ClientRecord(key, "o1", "pay_a", 200), ClientRecord(key, "o1", "pay_b", 200)], {})
    assert result.violation_count == 2
    assert all(CARD_NUMBER not in violation.detail for violation in result.violations)
    assert "[REDACTED-PAN]" in result.violations[0].detail


async def test_a_check_that_cannot_run_is_reported_and_the_others_still_run(
    engine: AsyncEngine, temporal_client: Client
) -> None:
    unreachable = f"http://127.0.0.1:{free_port()}"
    results = by_name(
        await check_invariants(
            engine=engine,
            emulator_url=unreachable,
            temporal=temporal_client,
            logs_dir=None,
            client_records=[],
            order_ids=[f"order_{uuid.uuid4().hex[:12]}"],
            workflows_of_orders_only=True,
        )
    )
    needs_the_processor = {ONE_CHARGE_PER_ORDER, MONEY_MATCHES, WEBHOOKS_ACCOUNTED}
    for name, result in results.items():
        if name in needs_the_processor:
            assert result.error is not None and result.violation_count == 1 and not result.ok
            assert result.error.startswith("could not check: ")
        else:
            assert result.ok, format_report(list(results.values()))
    assert "could not check" in format_report(list(results.values()))
