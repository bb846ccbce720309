"""Benchmark: one worker process, then two on the same task queue: the work spreads, nothing is
done twice, and how many rows a payment leaves in each table.

    .venv/bin/python bench/workers.py [--payments 150] [--concurrency 50]

Starts embedded PostgreSQL, the Temporal dev server and the Stripe emulator (as
bench/payments.py does), then runs `--payments` payments to their first milestone (CAPTURED)
with ONE `worker.py` process polling a task queue, and as many again with TWO `worker.py`
processes polling another. For the two-worker run it reads every payment's Temporal history
and counts, per worker identity (Temporal's default: `pid@host`), the workflow tasks it
completed and the activity tasks it started (local activities run inside the workflow task of
the worker holding the workflow, so they follow the workflow tasks). Then it checks:

- every payment reached CAPTURED;
- one PaymentIntent at the emulator per order (`one_charge_per_order`, as `penny chaos` checks);
- the ledger entries of each payment: the same kinds and amounts for every payment of both runs;
- the ledger's own `verify()` finds nothing.

It prints payments/s for one worker and for two. On this 2-core machine the two workers share
the two cores with PostgreSQL, Temporal and the emulator, so the ratio measures the spread and
its overhead, not capacity. Last, the rows per payment in every table (the arithmetic behind
"Scaling past one machine" in the README).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after ROOT: bench/ledger.py must not shadow the ledger package

from payments import (  # noqa: E402
    WARMUP_PAYMENTS,
    bench_payment,
    drive,
    percentile,
    services,
    spawn_worker,
    worker_environment,
)
from sqlalchemy import text  # noqa: E402
from temporalio.api.enums.v1 import EventType  # noqa: E402
from temporalio.client import Client  # noqa: E402

from api.workflow_client import start_payment  # noqa: E402
from ledger import ledger as books  # noqa: E402
from penny.chaos_checks import check_one_charge_per_order  # noqa: E402
from penny.db import create_engine  # noqa: E402
from penny.payload_converter import DATA_CONVERTER  # noqa: E402
from penny.services import stop_process  # noqa: E402
from penny.settings import Settings  # noqa: E402
from stripe_emulator.control import EmulatorControl  # noqa: E402
from workflows.payment_models import workflow_id_for_order  # noqa: E402

HISTORY_READS_AT_ONCE = 20


async def run_payments(
    client: Client, settings: Settings, workers: int, payments: int, concurrency: int
) -> tuple[list[str], float, list[float], Counter[str]]:
    """`payments` payments with `workers` worker.py processes on a fresh task queue."""
    queue = f"bench-workers-{workers}-{uuid.uuid4().hex[:6]}"
    settings = settings.model_copy(update={"temporal_task_queue": queue})
    processes = [
        spawn_worker([sys.executable, str(ROOT / "worker.py")], worker_environment(settings)) for _ in range(workers)
    ]
    orders = [f"{queue}-{index}" for index in range(payments)]
    statuses: Counter[str] = Counter()

    async def one(index: int) -> None:
        state = await start_payment(client, settings, bench_payment(orders[index], index))
        statuses[state.status] += 1

    try:
        warm = [f"{queue}-warm-{index}" for index in range(WARMUP_PAYMENTS)]
        await drive(
            WARMUP_PAYMENTS, WARMUP_PAYMENTS, lambda i: start_payment(client, settings, bench_payment(warm[i], i))
        )
        elapsed, latencies = await drive(payments, concurrency, one)
        await asyncio.sleep(3.0)  # the steps after the first milestone (transfers, bookings)
    finally:
        for process in processes:
            stop_process(process)
    return orders, elapsed, latencies, statuses


async def work_per_identity(client: Client, orders: list[str]) -> tuple[Counter[str], Counter[str]]:
    """(workflow tasks completed, activity tasks started) per worker identity, over the orders' histories."""
    workflow_tasks: Counter[str] = Counter()
    activity_tasks: Counter[str] = Counter()
    semaphore = asyncio.Semaphore(HISTORY_READS_AT_ONCE)

    async def read(order_id: str) -> None:
        async with semaphore:
            history = await client.get_workflow_handle(workflow_id_for_order(order_id)).fetch_history()
        for event in history.events:
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_COMPLETED:
                workflow_tasks[event.workflow_task_completed_event_attributes.identity] += 1
            elif event.event_type == EventType.EVENT_TYPE_ACTIVITY_TASK_STARTED:
                activity_tasks[event.activity_task_started_event_attributes.identity] += 1

    await asyncio.gather(*(read(order_id) for order_id in orders))
    return workflow_tasks, activity_tasks


async def entries_per_payment(settings: Settings, orders: list[str]) -> dict[str, list[tuple[str, str]]]:
    """Per order: its ledger entries as sorted (kind, amounts by line). Every benchmark payment
    is the same 99.99 USD split, so every order must show the same list, whichever worker ran it."""
    engine = create_engine(settings.effective_database_url, pool_size=2, pre_ping=False)
    try:
        async with engine.connect() as connection:
            rows = (
                await connection.execute(
                    text(
                        """
                        SELECT p.order_id, e.kind, string_agg(po.amount::text, ' ' ORDER BY po.line) AS amounts
                          FROM payments p
                          JOIN ledger.entries e ON e.metadata ->> 'payment_id' = p.id
                          JOIN ledger.postings po ON po.entry_id = e.id
                         WHERE p.order_id = ANY(:orders) AND e.metadata ? 'payment_id'
                         GROUP BY p.order_id, e.id, e.kind
                        """
                    ),
                    {"orders": orders},
                )
            ).all()
    finally:
        await engine.dispose()
    found: dict[str, list[tuple[str, str]]] = {order_id: [] for order_id in orders}
    for order_id, kind, amounts in rows:
        found[order_id].append((kind, amounts))
    return {order_id: sorted(entries) for order_id, entries in found.items()}


async def rows_per_table(settings: Settings) -> list[tuple[str, int]]:
    engine = create_engine(settings.effective_database_url, pool_size=2, pre_ping=False)
    try:
        async with engine.connect() as connection:
            tables = (
                await connection.execute(
                    text(
                        "SELECT schemaname || '.' || relname FROM pg_stat_user_tables"
                        " WHERE schemaname IN ('public', 'ledger') ORDER BY 1"
                    )
                )
            ).scalars()
            counts = []
            for table in list(tables):
                counts.append(
                    (table, int((await connection.execute(text(f"SELECT count(*) FROM {table}"))).scalar_one()))
                )
            findings = await books.verify(connection)
    finally:
        await engine.dispose()
    if findings:
        raise SystemExit(f"FAIL ledger verify: {findings[:5]}")
    return counts


def rate_line(label: str, elapsed: float, latencies: list[float]) -> float:
    rate = len(latencies) / elapsed
    print(
        f"  {label:<28} {rate:6.1f}/s   p50 {statistics.median(latencies) * 1000:7.1f} ms"
        f"   p99 {percentile(latencies, 0.99) * 1000:7.1f} ms   ({len(latencies)} in {elapsed:.1f}s)"
    )
    return rate


async def main_async(payments: int, concurrency: int) -> int:
    failures = 0

    def check(name: str, ok: bool, detail: str) -> None:
        nonlocal failures
        failures += not ok
        print(f"  {'PASS' if ok else 'FAIL'} {name}: {detail}")

    async with services("penny-bench-workers-") as (database_url, temporal_port, emulator_port):
        client = await Client.connect(f"127.0.0.1:{temporal_port}", data_converter=DATA_CONVERTER)  # as the API's
        settings = Settings(
            env="test",
            database_url=database_url,
            temporal_address=f"127.0.0.1:{temporal_port}",
            stripe_api_base=f"http://127.0.0.1:{emulator_port}",
        )
        print(f"Workers benchmark: {payments} payments per run at concurrency {concurrency}, 2 cores")
        one_orders, one_elapsed, one_latencies, one_statuses = await run_payments(
            client, settings, 1, payments, concurrency
        )
        two_orders, two_elapsed, two_latencies, two_statuses = await run_payments(
            client, settings, 2, payments, concurrency
        )
        started = time.perf_counter()
        workflow_tasks, activity_tasks = await work_per_identity(client, two_orders)
        print(f"two workers, per identity ({len(two_orders)} histories, read in {time.perf_counter() - started:.1f}s):")
        for identity in sorted(set(workflow_tasks) | set(activity_tasks)):
            print(
                f"  {identity:<24} workflow tasks {workflow_tasks[identity]:5} "
                f"({workflow_tasks[identity] / max(1, sum(workflow_tasks.values())):.0%})   activity tasks "
                f"{activity_tasks[identity]:5} ({activity_tasks[identity] / max(1, sum(activity_tasks.values())):.0%})"
            )
        print("throughput to the first milestone:")
        one_rate = rate_line("one worker process", one_elapsed, one_latencies)
        two_rate = rate_line("two worker processes", two_elapsed, two_latencies)
        print(
            f"  ratio two / one = {two_rate / one_rate:.2f} (both share these 2 cores with PostgreSQL, Temporal and"
            " the emulator: this measures the spread and its overhead, not capacity)"
        )
        print("checks:")
        check(
            "work spreads",
            len(workflow_tasks) == 2 and min(workflow_tasks.values()) >= 0.2 * sum(workflow_tasks.values()),
            f"{len(workflow_tasks)} identities completed workflow tasks, the smaller share "
            f"{min(workflow_tasks.values(), default=0) / max(1, sum(workflow_tasks.values())):.0%}",
        )
        check(
            "every payment captured",
            one_statuses == Counter({"CAPTURED": payments}) and two_statuses == Counter({"CAPTURED": payments}),
            f"one worker {dict(one_statuses)}, two workers {dict(two_statuses)}",
        )
        with EmulatorControl(settings.effective_stripe_api_base) as control:
            intents = control.payment_intents()
        charges = check_one_charge_per_order(intents, one_orders + two_orders)
        per_order = Counter(
            str(intent.get("metadata", {}).get("order_id")) for intent in intents if intent.get("status") == "succeeded"
        )
        check(
            "one PaymentIntent per order",
            not charges.violations and all(per_order[order] == 1 for order in one_orders + two_orders),
            f"{charges.checked} orders, {sum(per_order[order] for order in one_orders + two_orders)} succeeded"
            f" PaymentIntents, {len(charges.violations)} violations",
        )
        entries = await entries_per_payment(settings, one_orders + two_orders)
        shapes = Counter(tuple(found) for found in entries.values())
        check(
            "same ledger entries per payment",
            len(shapes) == 1,
            f"{len(shapes)} distinct shape(s) over {len(entries)} payments; "
            f"{len(next(iter(shapes))) if shapes else 0} entries each",
        )
        counts = await rows_per_table(settings)
        check("ledger verify", True, "no findings")
        total_payments = 2 * (payments + WARMUP_PAYMENTS)
        print(f"rows per payment after {total_payments} payments to CAPTURED (settlement not reached):")
        for table, count in counts:
            if count:
                print(f"  {table:<40} {count:7} rows   {count / total_payments:6.2f} per payment")
    print("RESULT:", "PASS" if failures == 0 else f"FAIL ({failures} checks)")
    return 1 if failures else 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=150)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    raise SystemExit(asyncio.run(main_async(args.payments, args.concurrency)))


if __name__ == "__main__":
    main()
