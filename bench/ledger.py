"""Ledger benchmark: 4-posting capture entries per second and latency, next to pgbench TPC-B.

Run: `.venv/bin/python bench/ledger.py` (about two minutes). It starts its own embedded
PostgreSQL in a temporary directory (same settings as `penny dev`: fsync on, synchronous
commit), migrates it, and measures:

- the ledger: one capture entry per transaction (Dr stripe:pending / Cr platform:fees /
  Cr tax:payable / Cr seller:<n>:payable, i.e. 4 postings), posted through the public API
  (`async with engine.begin(): await ledger.post(connection, draft)`), at concurrency 1, 8
  and 32, on two workloads:
    * low contention: 10,000 sellers, each entry picks one at random;
    * hot accounts: 4 sellers for everything.
  Every capture also credits platform:fees and debits stripe:pending, which are hot by
  nature; see the printed notes for how the ledger keeps them from serialising everything.
- pgbench TPC-B (`pgbench -i -s 10`, then `-c 8 -j 2 -T 15`) on the same server, same run.

It prints one table and the ratio of the best low-contention entries/s to pgbench's tps.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import chart
from ledger import ledger as books
from ledger.models import AccountSpec, EntryDraft, Posting
from penny.db import create_engine, migrate
from penny.services import EmbeddedPostgres, free_port, postgres_bin_dir

CURRENCY = "USD"
SELLERS_LOW_CONTENTION = 10_000
SELLERS_HOT = 4
CONCURRENCY_LEVELS = (1, 8, 32)
PGBENCH_SCALE = 10
PGBENCH_CLIENTS = 8
PGBENCH_THREADS = 2
POSTINGS_PER_ENTRY = 4
ACCOUNTS_PER_BATCH = 1000


@dataclass
class Result:
    workload: str
    concurrency: int
    entries: int
    seconds: float
    latencies_ms: list[float]

    @property
    def entries_per_second(self) -> float:
        return self.entries / self.seconds

    def percentile(self, fraction: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def seller_account(number: int) -> str:
    return f"bench_{number}"


def capture_draft(run: str, sequence: int, seller: int) -> EntryDraft:
    total = 1000 + sequence % 9000
    fee = total // 10
    tax = total // 20
    return EntryDraft(
        idempotency_key=f"bench:{run}:{sequence}",
        description="benchmark capture",
        postings=(
            Posting(chart.stripe_pending(CURRENCY), total, CURRENCY),
            Posting(chart.account("platform:fees", CURRENCY), -fee, CURRENCY),
            Posting(chart.account("tax:payable", CURRENCY), -tax, CURRENCY),
            Posting(chart.seller_payable(seller_account(seller), CURRENCY), -(total - fee - tax), CURRENCY),
        ),
        metadata={"payment_id": f"{run}_{sequence}"},
    )


async def open_bench_accounts(engine: AsyncEngine) -> None:
    fixed = ["stripe:pending", "platform:fees", "tax:payable"]
    specs: list[AccountSpec] = [chart.account_spec(chart.account(name, CURRENCY), CURRENCY) for name in fixed]
    specs += [
        chart.account_spec(chart.seller_payable(seller_account(number), CURRENCY), CURRENCY)
        for number in range(SELLERS_LOW_CONTENTION)
    ]
    for start in range(0, len(specs), ACCOUNTS_PER_BATCH):
        async with engine.begin() as connection:
            await books.open_accounts(connection, specs[start : start + ACCOUNTS_PER_BATCH])


async def run_workload(
    engine: AsyncEngine, workload: str, sellers: int, concurrency: int, duration_seconds: float
) -> Result:
    run = f"{workload}{concurrency}_{random.randrange(10**9)}"
    counter = iter(range(10**9))
    latencies_ms: list[float] = []
    randomness = random.Random(concurrency)
    deadline = time.perf_counter() + duration_seconds

    async def worker() -> None:
        while time.perf_counter() < deadline:
            draft = capture_draft(run, next(counter), randomness.randrange(sellers))
            started = time.perf_counter()
            async with engine.begin() as connection:
                entry = await books.post(connection, draft)
            latencies_ms.append((time.perf_counter() - started) * 1000)
            assert entry.created

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    return Result(workload, concurrency, len(latencies_ms), elapsed, latencies_ms)


async def warm_up(engine: AsyncEngine) -> None:
    # Fill the pool and the prepared-statement caches so the first measurement is not an outlier.
    await run_workload(engine, "warmup", SELLERS_LOW_CONTENTION, max(CONCURRENCY_LEVELS), 2.0)


def run_pgbench(server: EmbeddedPostgres, database: str, duration_seconds: int) -> tuple[float, str]:
    pgbench = str(postgres_bin_dir() / "pgbench")
    connection = ["-h", server.host, "-p", str(server.port), "-U", "postgres"]
    server.ensure_database(database)
    subprocess.run(
        [pgbench, *connection, "-i", "-q", "-s", str(PGBENCH_SCALE), database], check=True, capture_output=True
    )
    command = [
        pgbench,
        *connection,
        "-c",
        str(PGBENCH_CLIENTS),
        "-j",
        str(PGBENCH_THREADS),
        "-T",
        str(duration_seconds),
    ]
    output = subprocess.run([*command, database], check=True, capture_output=True, text=True).stdout
    match = re.search(r"tps = ([0-9.]+)", output)
    if match is None:
        raise RuntimeError(f"pgbench printed no tps:\n{output}")
    latency = re.search(r"latency average = ([0-9.]+) ms", output)
    return float(match.group(1)), latency.group(1) if latency else "?"


def print_table(results: list[Result], pgbench_tps: float, pgbench_latency_ms: str) -> None:
    header = f"{'workload':<16}{'conc.':>6}{'entries/s':>11}{'postings/s':>12}{'p50 ms':>9}{'p99 ms':>9}{'entries':>9}"
    print(header)
    print("-" * len(header))
    for result in results:
        print(
            f"{result.workload:<16}{result.concurrency:>6}{result.entries_per_second:>11.0f}"
            f"{result.entries_per_second * POSTINGS_PER_ENTRY:>12.0f}{result.percentile(0.5):>9.2f}"
            f"{result.percentile(0.99):>9.2f}{result.entries:>9}"
        )
    print(
        f"{'pgbench TPC-B':<16}{PGBENCH_CLIENTS:>6}{pgbench_tps:>11.0f}{'':>12}{pgbench_latency_ms:>9}{'(avg)':>9}"
        f"   scale {PGBENCH_SCALE}, -j {PGBENCH_THREADS}"
    )
    best_low = max(result.entries_per_second for result in results if result.workload == "low-contention")
    print(f"\nbest low-contention entries/s / pgbench tps = {best_low / pgbench_tps:.0%}")


async def measure(url: str, duration_seconds: float) -> list[Result]:
    engine = create_engine(url, pool_size=max(CONCURRENCY_LEVELS))
    try:
        await open_bench_accounts(engine)
        await warm_up(engine)
        results = []
        for workload, sellers in (("low-contention", SELLERS_LOW_CONTENTION), ("hot-accounts", SELLERS_HOT)):
            for concurrency in CONCURRENCY_LEVELS:
                results.append(await run_workload(engine, workload, sellers, concurrency, duration_seconds))
        async with engine.connect() as connection:
            findings = await books.verify(connection)
        if findings:
            raise RuntimeError(f"verify found problems after the benchmark: {findings[:5]}")
        return results
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each ledger measurement")
    parser.add_argument("--pgbench-seconds", type=int, default=15)
    arguments = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="penny-bench-") as directory:
        data_dir = Path(directory)
        server = EmbeddedPostgres(data_dir=data_dir, port=free_port(), log_path=data_dir / "postgres.log")
        server.start()
        try:
            server.ensure_database("ledger_bench")
            migrate(server.url("ledger_bench"), "0002_ledger")
            results = asyncio.run(measure(server.url("ledger_bench"), arguments.seconds))
            pgbench_tps, pgbench_latency = run_pgbench(server, "pgbench", arguments.pgbench_seconds)
        finally:
            server.stop()
    print_table(results, pgbench_tps, pgbench_latency)


if __name__ == "__main__":
    main()
