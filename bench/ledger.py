"""Ledger benchmark: 4-posting capture entries per second, beside a transfer ledger and pgbench.

Run: `.venv/bin/python bench/ledger.py` (about three minutes). It starts its own embedded
PostgreSQL in a temporary directory (same settings as `penny dev`: fsync on, synchronous
commit), migrates it, and measures on that one server, in one run:

- Penny's ledger: one capture entry (Dr stripe:pending / Cr platform:fees / Cr tax:payable /
  Cr seller:<n>:payable, 4 postings) per transaction, three ways a caller posts:
    * `in-transaction`: `async with engine.begin(): await ledger.post(connection, draft)`, the
      shape of a payment activity (BEGIN, the ledger's statement, COMMIT);
    * `one-statement`: `Ledger(engine).post(draft)`, the statement is its own transaction
      (one round trip), the shape of the baseline below;
    * `batch of 10`: `Ledger(engine).post_many(ten drafts)`, counted in entries;
  on two workloads: low contention (10,000 sellers, each entry picks one at random) and hot
  accounts (4 sellers for everything). Every capture also credits platform:fees and debits
  stripe:pending, which are hot by nature (their balances are spread over 16 slot rows).
- the baseline ledger (bench/_transfer_ledger.sql: a two-account transfer as pgledger does
  it: lock both accounts in id order, update two balances, append a transfer and two entries),
  through the same client (asyncpg, one statement per transaction), on 50 and on 10 accounts;
- both ledgers' SQL alone, driven by pgbench's C client (`pgbench -f`), so the server's cost
  per entry can be told apart from the Python client's; beside them, under pgbench too, the
  entry floor (bench/_entry_floor.sql): the rows a capture entry writes (one entry, four
  postings, four balances, on 4 of 200 accounts) written the transfer ledger's way, with none
  of Penny's guarantees: what that row work costs on this server;
- pgbench TPC-B (`pgbench -i -s 10`, then `-c 8 -j 2`).

Every figure is printed beside the baseline it is compared with; the ratios at the end are
the targets of #16 (entries/s >= 1.0x the transfer ledger's transfers/s at low contention,
>= 0.5x pgbench TPC-B, hot accounts >= 0.5x low contention).

`--profile` also prints the server's time per statement (pg_stat_statements, nested
statements included) for a run of the in-transaction path at concurrency 8.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import asyncpg
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from ledger import chart
from ledger import ledger as books
from ledger.models import AccountSpec, EntryDraft, Posting
from penny.db import create_engine, migrate
from penny.services import EmbeddedPostgres, free_port, postgres_bin_dir

BENCH_DIR = Path(__file__).resolve().parent
CURRENCY = "USD"
SELLERS_LOW_CONTENTION = 10_000
SELLERS_HOT = 4
TRANSFER_ACCOUNTS = (50, 10)
BATCH_ENTRIES = 10
PGBENCH_SCALE = 10
PGBENCH_CLIENTS = 8
PGBENCH_THREADS = 2
POSTINGS_PER_ENTRY = 4
ACCOUNTS_PER_BATCH = 1000
POOL_SIZE = 32
# (workload, path, concurrency): what is measured, in this order.
PENNY_RUNS = (
    ("low-contention", "in-transaction", 1),
    ("low-contention", "in-transaction", 8),
    ("low-contention", "one-statement", 1),
    ("low-contention", "one-statement", 8),
    ("low-contention", "one-statement", 32),
    ("low-contention", "batch of 10", 8),
    ("hot-accounts", "in-transaction", 8),
    ("hot-accounts", "one-statement", 8),
    ("hot-accounts", "one-statement", 32),
)
BASELINE_CONCURRENCY = 8


@dataclass
class Result:
    workload: str
    path: str
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


async def closed_loop(
    concurrency: int, duration_seconds: float, one: Callable[[], Awaitable[int]]
) -> tuple[int, float, list[float]]:
    """`concurrency` workers calling `one` (which returns how many entries it wrote) until the deadline."""
    latencies_ms: list[float] = []
    written = 0
    deadline = time.perf_counter() + duration_seconds

    async def worker() -> None:
        nonlocal written
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            entries = await one()  # (not `written += await one()`: that reads `written` before the await)
            written += entries
            latencies_ms.append((time.perf_counter() - started) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return written, time.perf_counter() - started, latencies_ms


async def run_penny(engine: AsyncEngine, workload: str, path: str, concurrency: int, duration_seconds: float) -> Result:
    sellers = SELLERS_LOW_CONTENTION if workload == "low-contention" else SELLERS_HOT
    run = f"{workload}-{path}-{concurrency}-{random.randrange(10**9)}".replace(" ", "")
    counter = itertools.count()
    randomness = random.Random(concurrency)
    ledger = books.Ledger(engine)

    def next_draft() -> EntryDraft:
        return capture_draft(run, next(counter), randomness.randrange(sellers))

    async def in_transaction() -> int:
        async with engine.begin() as connection:
            assert (await books.post(connection, next_draft())).created
        return 1

    async def one_statement() -> int:
        assert (await ledger.post(next_draft())).created
        return 1

    async def batch() -> int:
        entries = await ledger.post_many([next_draft() for _ in range(BATCH_ENTRIES)])
        assert all(entry.created for entry in entries)
        return len(entries)

    one = {"in-transaction": in_transaction, "one-statement": one_statement, "batch of 10": batch}[path]
    written, seconds, latencies = await closed_loop(concurrency, duration_seconds, one)
    return Result(workload, path, concurrency, written, seconds, latencies)


async def run_transfers(dsn: str, accounts: int, concurrency: int, duration_seconds: float) -> Result:
    """The baseline ledger through the same client library: one statement per transaction."""
    pool = await asyncpg.create_pool(dsn, min_size=concurrency, max_size=concurrency)
    randomness = random.Random(accounts)
    statement = "SELECT transfer_ledger.transfer($1, $2, $3)"

    async def transfer() -> int:
        source, target = randomness.sample(range(1, accounts + 1), 2)
        async with pool.acquire() as connection:
            await connection.fetchval(statement, source, target, randomness.randrange(1, 10_000))
        return 1

    try:
        written, seconds, latencies = await closed_loop(concurrency, duration_seconds, transfer)
    finally:
        await pool.close()
    return Result(f"{accounts} accounts", "transfer ledger", concurrency, written, seconds, latencies)


async def warm_up(engine: AsyncEngine) -> None:
    # Fill the pool and the prepared-statement caches so the first measurement is not an outlier.
    for path in ("in-transaction", "one-statement", "batch of 10"):
        await run_penny(engine, "low-contention", path, POOL_SIZE, 1.0)


async def profile_statements(engine: AsyncEngine, duration_seconds: float) -> list[tuple[int, float, str]]:
    async with engine.begin() as connection:
        await connection.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        await connection.execute(text("SELECT pg_stat_statements_reset()"))
    await run_penny(engine, "low-contention", "in-transaction", 8, duration_seconds)
    async with engine.connect() as connection:
        rows = await connection.execute(
            text(
                "SELECT calls, mean_exec_time, regexp_replace(query, '\\s+', ' ', 'g') FROM pg_stat_statements"
                " WHERE query NOT LIKE '%pg_stat_statements%' ORDER BY total_exec_time DESC LIMIT 12"
            )
        )
        return [(int(calls), float(mean_ms), str(query)[:110]) for calls, mean_ms, query in rows]


def pgbench(server: EmbeddedPostgres, database: str, arguments: list[str]) -> tuple[float, float]:
    """(tps, average latency ms) of one pgbench run."""
    command = [str(postgres_bin_dir() / "pgbench"), "-h", server.host, "-p", str(server.port), "-U", "postgres"]
    output = subprocess.run([*command, *arguments, database], check=True, capture_output=True, text=True).stdout
    tps = re.search(r"tps = ([0-9.]+)", output)
    latency = re.search(r"latency average = ([0-9.]+) ms", output)
    if tps is None or latency is None:
        raise RuntimeError(f"pgbench printed no tps:\n{output}")
    return float(tps.group(1)), float(latency.group(1))


PENNY_SCRIPT = """\\set seller random(0, {last_seller})
\\set total random(1000, 9999)
\\set fee :total / 10
\\set tax :total / 20
SELECT * FROM ledger.post_entries(ARRAY[gen_random_uuid()::text], ARRAY['pgbench'], ARRAY['posted'],
  ARRAY['pgbench capture'], ARRAY['{{}}'::jsonb], ARRAY[NULL::timestamptz], ARRAY[NULL::bigint],
  ARRAY[1, 1, 1, 1], ARRAY[0, 1, 2, 3]::smallint[],
  ARRAY['stripe:pending:usd', 'platform:fees:usd', 'tax:payable:usd', 'seller:bench_' || :seller || ':payable:usd'],
  ARRAY[:total, -:fee, -:tax, :fee + :tax - :total]::bigint[], ARRAY['USD', 'USD', 'USD', 'USD'],
  '{{}}'::text[], '{{}}'::text[], '{{}}'::text[], '{{}}'::boolean[], '{{}}'::jsonb[]);
"""

# Four distinct accounts of 200, one from each quarter: each account is locked as often as the
# transfer ledger's (2 of 50).
FLOOR_SCRIPT = """\\set a random(1, 50)
\\set b random(51, 100)
\\set c random(101, 150)
\\set d random(151, 200)
\\set total random(1000, 9999)
\\set fee :total / 10
\\set tax :total / 20
SELECT entry_floor.post(ARRAY[:a, :b, :c, :d]::bigint[], ARRAY[:total, -:fee, -:tax, :fee + :tax - :total]::bigint[]);
"""
FLOOR_ACCOUNTS = 200
FLOOR_OPEN_ACCOUNTS = (
    f"INSERT INTO entry_floor.accounts (id, currency) SELECT n, 'USD' FROM generate_series(1, {FLOOR_ACCOUNTS}) n"
)

TRANSFER_SCRIPT = """\\set source random(1, {accounts})
\\set other random(1, {accounts_less_one})
SELECT transfer_ledger.transfer(:source, CASE WHEN :other >= :source THEN :other + 1 ELSE :other END,
  (random() * 9999)::bigint + 1);
"""


def sql_only(server: EmbeddedPostgres, database: str, directory: Path, seconds: int) -> list[Result]:
    """Both ledgers' SQL driven by pgbench's C client: the server's own cost, without Python's."""
    scripts = {
        ("low-contention", "penny post_entries"): PENNY_SCRIPT.format(last_seller=SELLERS_LOW_CONTENTION - 1),
        ("hot-accounts", "penny post_entries"): PENNY_SCRIPT.format(last_seller=SELLERS_HOT - 1),
        ("50 accounts", "transfer ledger"): TRANSFER_SCRIPT.format(accounts=50, accounts_less_one=49),
        (f"{FLOOR_ACCOUNTS} accounts", "entry floor"): FLOOR_SCRIPT,
    }
    results = []
    for (workload, path), script in scripts.items():
        script_path = directory / f"{path.replace(' ', '_')}_{workload}.sql"
        script_path.write_text(script)
        tps, latency = pgbench(
            server,
            database,
            ["-n", "-c", str(PGBENCH_CLIENTS), "-j", str(PGBENCH_THREADS), "-T", str(seconds), "-f", str(script_path)],
        )
        entries = int(tps * seconds)
        results.append(Result(workload, f"{path} (pgbench)", PGBENCH_CLIENTS, entries, seconds, [latency]))
    return results


def print_table(title: str, results: list[Result]) -> None:
    print(title)
    header = f"{'workload':<16}{'path':<30}{'conc.':>6}{'entries/s':>11}{'postings/s':>12}{'p50 ms':>9}{'p99 ms':>9}"
    print(header)
    print("-" * len(header))
    for result in results:
        postings = POSTINGS_PER_ENTRY if result.path != "transfer ledger" and "transfer" not in result.path else 2
        print(
            f"{result.workload:<16}{result.path:<30}{result.concurrency:>6}{result.entries_per_second:>11.0f}"
            f"{result.entries_per_second * postings:>12.0f}{result.percentile(0.5):>9.2f}"
            f"{result.percentile(0.99):>9.2f}"
        )
    print()


def best(results: list[Result], workload: str, path: str) -> float:
    return max(r.entries_per_second for r in results if r.workload == workload and r.path == path)


async def measure(url: str, dsn: str, duration_seconds: float, profile: bool) -> tuple[list[Result], list[Result]]:
    # pre_ping off, as in the worker: a checkout is not a round trip.
    engine = create_engine(url, pool_size=POOL_SIZE, pre_ping=False)
    try:
        await open_bench_accounts(engine)
        async with engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO transfer_ledger.accounts (id, currency) SELECT n, 'USD' FROM generate_series(1, :n) n"
                ),
                {"n": max(TRANSFER_ACCOUNTS)},
            )
        await warm_up(engine)
        penny = [await run_penny(engine, *run, duration_seconds) for run in PENNY_RUNS]
        baseline = [
            await run_transfers(dsn, accounts, BASELINE_CONCURRENCY, duration_seconds) for accounts in TRANSFER_ACCOUNTS
        ]
        if profile:
            print("Server time per statement, in-transaction path at concurrency 8 (pg_stat_statements, nested):")
            for calls, mean_ms, query in await profile_statements(engine, duration_seconds):
                print(f"  {calls:>7} calls  {mean_ms:7.3f} ms  {query}")
            print()
        async with engine.connect() as connection:
            findings = await books.verify(connection)
        if findings:
            raise RuntimeError(f"verify found problems after the benchmark: {findings[:5]}")
        return penny, baseline
    finally:
        await engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="duration of each ledger measurement")
    parser.add_argument("--pgbench-seconds", type=int, default=10)
    parser.add_argument("--profile", action="store_true", help="print the server's time per statement")
    arguments = parser.parse_args()
    settings = ("shared_preload_libraries=pg_stat_statements", "pg_stat_statements.track=all")
    with tempfile.TemporaryDirectory(prefix="penny-bench-") as directory:
        data_dir = Path(directory)
        server = EmbeddedPostgres(
            data_dir=data_dir,
            port=free_port(),
            log_path=data_dir / "postgres.log",
            settings=settings if arguments.profile else (),
        )
        server.start()
        try:
            server.ensure_database("ledger_bench")
            migrate(server.url("ledger_bench"))
            subprocess.run(
                [str(postgres_bin_dir() / "psql"), "-h", server.host, "-p", str(server.port), "-U", "postgres",
                 "-q", "-v", "ON_ERROR_STOP=1", "-f", str(BENCH_DIR / "_transfer_ledger.sql"),
                 "-f", str(BENCH_DIR / "_entry_floor.sql"), "-c", FLOOR_OPEN_ACCOUNTS,
                 "ledger_bench"],
                check=True,
                capture_output=True,
            )  # fmt: skip
            dsn = server.url("ledger_bench", driver="postgresql")
            penny, baseline = asyncio.run(
                measure(server.url("ledger_bench"), dsn, arguments.seconds, arguments.profile)
            )
            sql = sql_only(server, "ledger_bench", data_dir, arguments.pgbench_seconds)
            server.ensure_database("pgbench")
            subprocess.run(
                [str(postgres_bin_dir() / "pgbench"), "-h", server.host, "-p", str(server.port), "-U", "postgres",
                 "-i", "-q", "-s", str(PGBENCH_SCALE), "pgbench"],
                check=True,
                capture_output=True,
            )  # fmt: skip
            tpcb_tps, tpcb_latency = pgbench(
                server,
                "pgbench",
                ["-c", str(PGBENCH_CLIENTS), "-j", str(PGBENCH_THREADS), "-T", str(arguments.pgbench_seconds)],
            )
        finally:
            server.stop()
    print_table("Penny's ledger (Python client: SQLAlchemy engine, asyncpg driver)", penny)
    print_table("Baseline: transfer ledger, same client library (asyncpg), one statement per transaction", baseline)
    print_table("SQL alone, pgbench's C client (no Python)", sql)
    tpcb = f"pgbench TPC-B: {tpcb_tps:.0f} tps, {tpcb_latency:.2f} ms average"
    print(f"{tpcb}, {PGBENCH_CLIENTS} clients, scale {PGBENCH_SCALE}\n")
    low = best(penny, "low-contention", "one-statement")
    hot = best(penny, "hot-accounts", "one-statement")
    transfers = best(baseline, "50 accounts", "transfer ledger")
    print("Ratios (targets of #16 in brackets):")
    print(f"  low-contention entries/s / transfer ledger transfers/s (50 accounts) = {low / transfers:.2f}  [>= 1.0]")
    print(f"  low-contention entries/s / pgbench TPC-B tps                        = {low / tpcb_tps:.2f}  [>= 0.5]")
    print(f"  hot-accounts entries/s / low-contention entries/s                   = {hot / low:.2f}  [>= 0.5]")
    sql_penny = best(sql, "low-contention", "penny post_entries (pgbench)")
    sql_transfers = best(sql, "50 accounts", "transfer ledger (pgbench)")
    print(f"  SQL alone: penny entries/s / transfer ledger transfers/s             = {sql_penny / sql_transfers:.2f}")
    sql_floor = best(sql, f"{FLOOR_ACCOUNTS} accounts", "entry floor (pgbench)")
    print(f"  SQL alone: entry floor entries/s / transfer ledger transfers/s       = {sql_floor / sql_transfers:.2f}")
    print(f"  SQL alone: penny entries/s / entry floor entries/s                   = {sql_penny / sql_floor:.2f}")
    batched = best(penny, "low-contention", "batch of 10")
    print(f"  batch of 10 entries/s / one-statement entries/s (8 clients)         = {batched / low:.2f}")
    print(f"  batch of 10 entries/s / transfer ledger transfers/s (50 accounts)   = {batched / transfers:.2f}")


if __name__ == "__main__":
    main()
