"""Benchmark: POST /v1/payments at fixed arrival rates, and the Idempotency-Key replay path.

    .venv/bin/python bench/api.py [--rates 20,50] [--seconds 30] [--replays 500]

Starts the whole stack as `penny dev` does (embedded Postgres, Temporal dev server, Stripe
emulator, worker, API as separate processes) on free ports in a temporary data folder, makes
a merchant key, then for each rate sends requests open-loop: request i is due at
start + i / rate whatever the earlier ones are doing, and its latency is measured from that
due time (so a slow server cannot hide its queueing: no coordinated omission). Each request
is a new order with a new Idempotency-Key; its answer comes at the payment's first milestone
(here: captured, which includes the emulator's PaymentIntent create + confirm and the ledger
writes). Then the replay path: already-answered keys sent again, one after another.

Requests go through `penny.client` (AsyncPennyClient), as a marketplace's service would send
them: its retries (same Idempotency-Key, on timeouts, 409 in flight, 5xx) count in a request's
latency and are reported.

Prints achieved rate, p50/p95/p99/max latency, error count, client retries and the statuses seen.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from penny.client import AsyncPennyClient, PennyError, RetryEvent, new_idempotency_key  # noqa: E402
from penny.db import create_engine  # noqa: E402
from penny.keys import create_api_key  # noqa: E402
from penny.services import free_port  # noqa: E402
from penny.settings import Settings  # noqa: E402
from penny.stack import Stack  # noqa: E402

REQUEST_TIMEOUT_SECONDS = 60.0
CONNECTIONS_MAX = 400
WARMUP_PAYMENTS = 20


@dataclass
class Run:
    label: str
    latencies_seconds: list[float] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    errors: int = 0
    retries: int = 0
    elapsed_seconds: float = 0.0
    answered_keys: list[tuple[str, dict[str, Any], str]] = field(default_factory=list)

    def report(self) -> str:
        ordered = sorted(self.latencies_seconds)
        if not ordered:
            return f"{self.label}: no answers, {self.errors} errors"

        def percentile(fraction: float) -> float:
            return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1000

        rate = len(ordered) / self.elapsed_seconds if self.elapsed_seconds else 0.0
        return (
            f"{self.label}: {len(ordered)} answered in {self.elapsed_seconds:.1f}s ({rate:.1f}/s), "
            f"p50 {percentile(0.50):.0f} ms, p95 {percentile(0.95):.0f} ms, p99 {percentile(0.99):.0f} ms, "
            f"max {ordered[-1] * 1000:.0f} ms, mean {statistics.fmean(ordered) * 1000:.0f} ms, "
            f"errors {self.errors}, client retries {self.retries}, outcomes {dict(self.statuses)}"
        )


def payment_body() -> dict[str, Any]:
    return {
        "order_id": f"bench_{uuid.uuid4()}",
        "amount": 2500,
        "currency": "usd",
        "customer": f"cus_{uuid.uuid4().hex[:12]}",  # one each: the risk check reviews bursts per customer
        "payment_method": "pm_card_visa",
        "recipients": [{"account_id": "acct_bench_seller", "share_bps": 10000}],
        "application_fee_bps": 1000,
    }


async def one_payment(penny: AsyncPennyClient, run: Run, due: float, key: str, body: dict[str, Any]) -> None:
    delay = due - time.perf_counter()
    if delay > 0:
        await asyncio.sleep(delay)
    try:
        payment = await penny.create_payment(**body, idempotency_key=key)
    except PennyError as error:
        run.errors += 1
        run.statuses[f"http_{error.status}:{error.code}" if error.status else type(error).__name__] += 1
        return
    run.latencies_seconds.append(time.perf_counter() - due)
    run.statuses[payment["status"]] += 1
    run.answered_keys.append((key, body, payment["id"]))


def _counting(run: Run) -> Callable[[RetryEvent], None]:
    def count(event: RetryEvent) -> None:
        run.retries += 1

    return count


async def fixed_rate(api: ApiTarget, rate: float, seconds: float) -> Run:
    run = Run(f"POST /v1/payments at {rate:g}/s for {seconds:g}s")
    count = int(rate * seconds)
    async with api.client(_counting(run)) as penny:
        began = time.perf_counter()
        await asyncio.gather(
            *(
                one_payment(penny, run, began + index / rate, new_idempotency_key(), payment_body())
                for index in range(count)
            )
        )
        run.elapsed_seconds = time.perf_counter() - began
    return run


async def replays(api: ApiTarget, answered: list[tuple[str, dict[str, Any], str]], count: int) -> Run:
    run = Run(f"replay (same Idempotency-Key and body), {count} sequential")
    async with api.client(_counting(run)) as penny:
        began = time.perf_counter()
        for key, body, payment_id in (answered * (count // max(1, len(answered)) + 1))[:count]:
            sent = time.perf_counter()
            payment = await penny.create_payment(**body, idempotency_key=key)
            run.latencies_seconds.append(time.perf_counter() - sent)
            replayed = payment["id"] == payment_id
            run.statuses["same payment" if replayed else "another payment"] += 1
            run.errors += 0 if replayed else 1
        run.elapsed_seconds = time.perf_counter() - began
    return run


@dataclass
class ApiTarget:
    base_url: str
    api_key: str

    def client(self, on_retry: Callable[[RetryEvent], None]) -> AsyncPennyClient:
        limits = httpx.Limits(max_connections=CONNECTIONS_MAX, max_keepalive_connections=CONNECTIONS_MAX)
        return AsyncPennyClient(
            self.api_key, self.base_url, timeout_seconds=REQUEST_TIMEOUT_SECONDS, on_retry=on_retry, limits=limits
        )


async def make_key(settings: Settings) -> str:
    engine = create_engine(settings.effective_database_url, pool_size=1)
    try:
        async with engine.begin() as connection:
            return await create_api_key(connection, "merchant", "bench", pepper=settings.api_key_pepper)
    finally:
        await engine.dispose()


async def measure(settings: Settings, rates: list[float], seconds: float, replay_count: int) -> None:
    api = ApiTarget(f"http://{settings.host}:{settings.api_port}", await make_key(settings))
    warmup = await fixed_rate(api, 10, WARMUP_PAYMENTS / 10)
    print(f"warm-up: {warmup.report()}", flush=True)
    answered: list[tuple[str, dict[str, Any], str]] = []
    for rate in rates:
        run = await fixed_rate(api, rate, seconds)
        answered += run.answered_keys
        print(run.report(), flush=True)
    if answered and replay_count:
        print((await replays(api, answered, replay_count)).report(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="20,50", help="arrival rates per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=30.0, help="duration of each rate")
    parser.add_argument("--replays", type=int, default=500, help="replayed requests")
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",") if rate.strip()]

    with tempfile.TemporaryDirectory(prefix="penny-bench-") as data_dir:
        # The children (worker, API) read their settings from the environment, like `penny dev`.
        os.environ.update(
            {
                "PENNY_ENV": "development",
                "PENNY_DATA_DIR": data_dir,
                "PENNY_POSTGRES_PORT": str(free_port()),
                "PENNY_TEMPORAL_PORT": str(free_port()),
                "PENNY_TEMPORAL_UI_PORT": str(free_port()),
                "PENNY_EMULATOR_PORT": str(free_port()),
                "PENNY_API_PORT": str(free_port()),
            }
        )
        for name in ("DATABASE_URL", "TEMPORAL_ADDRESS", "STRIPE_API_BASE"):
            os.environ.pop(name, None)
            os.environ.pop(f"PENNY_{name}", None)
        settings = Settings()
        stack = Stack(settings)
        try:
            stack.start()
            print(f"\nPenny API benchmark ({os.cpu_count()} cores; stack in {data_dir})", flush=True)
            asyncio.run(measure(settings, rates, args.seconds, args.replays))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
