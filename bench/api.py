"""Benchmark: POST /v1/payments at fixed arrival rates, the highest rate the API sustains, and the
Idempotency-Key replay path, each beside a baseline measured in the same run.

    .venv/bin/python bench/api.py [--rates 10,20] [--seconds 20] [--search-seconds 10]
                                  [--search-steps 4] [--workflow-payments 200] [--replays 300]

Starts the whole stack as `penny dev` does (embedded Postgres, Temporal dev server, Stripe
emulator, worker, API as separate processes) on free ports in a temporary data folder, makes a
merchant key, and measures, in this order (a short warm-up first, and between two measurements
a wait until the stack's processes are idle again, so one run's backlog never counts in the next):

1. Payment-workflow throughput (the baseline of the sustained rate): payments started the way
   the API starts them (`api.workflow_client.start_payment`: update-with-start, answered at the
   first milestone) straight into Temporal, on the stack's worker, without HTTP or the API;
   closed loop, 50 at a time, as bench/payments.py measures it.
2. POST /v1/payments at each fixed rate (default 10/s and 20/s, `--seconds` each), open loop:
   request i is due at start + i / rate whatever the earlier ones are doing, and its latency
   counts from that due time (a slow server cannot hide its queueing: no coordinated
   omission). Each request is a new order with a new Idempotency-Key, answered at the payment's
   first milestone (here: captured: the emulator's PaymentIntent create + confirm and the
   ledger writes). Requests go through `penny.client` (AsyncPennyClient), as a marketplace's
   service sends them; its retries (same key) count in a request's latency and are reported.
   The load generator keeps at most IN_FLIGHT_MAX requests on the wire, spread over CLIENTS
   httpx pools that never queue (more in flight would make httpcore's pool spend its CPU
   re-scanning its queue); a request due while all are busy waits for a free one, and that
   wait counts in its latency.
3. The highest rate the API sustains without queueing: a rate is sustained when the answers
   keep pace with the arrivals (the answered rate at least SUSTAIN_ANSWERED_FRACTION of the
   offered one, estimated as the offered rate over the least-squares slope of answer times
   against due times, times the fraction answered: the offered rate when the server keeps up
   whatever its latency, its capacity when it falls behind) and latency does not grow through
   the run (p50 of the requests due in the last third at most SUSTAIN_P50_GROWTH_MAX times that
   of the first third). The fixed-rate runs count; then at most `--search-steps` short runs
   (`--search-seconds`) bisect between the highest rate sustained and the lowest not (10/s
   first when none was tried, 1.5x the highest when all held); the rate found is then measured
   for `--seconds` like the fixed rates.
4. The replay path: already-answered Idempotency-Keys sent again (same body), one after
   another, beside GET /v1/payments/{id} of the same payments (an authenticated one-row read).
5. The bare round trip (the baseline of the latencies): a workflow with the payment's activity
   shape, every activity a no-op (bench/_bare_workflow.py), started with update-with-start and
   answered at its first milestone, on the same Temporal dev server, its worker in its own
   process on its own task queue (started only now, so it never competes with the API for the
   cores), at each rate of step 2 and 3 with the same open-loop timing.

Prints each run as measured: achieved rate, p50/p95/p99/max latency, the p50 of the first and
last third, errors, the client's retries and their reasons, outcomes (payment statuses), the
API's own mean time for the request (from its /metrics, beside the client's mean: the rest is
the load generator and the wire), and the CPU each process (Postgres with its backends,
Temporal, emulator, worker, API, this load generator) spent per request, their idle use
(measured once at the start) subtracted, counted until the stack is idle again so a payment's
steps after its first milestone count too. Then a summary: p50/p99 of the API beside the bare
round trip's at each rate with the ratio p99(API)/p99(bare) (target at 10/s: at most 3x), the
highest sustained rate beside the payment-workflow throughput (target: at least 0.8x), and
the replay beside the plain read.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.append(str(ROOT / "bench"))  # after ROOT: bench/ledger.py must not shadow the ledger package

from _bare_workflow import start_to_milestone  # noqa: E402
from _cpu import LOAD_GENERATOR, CpuMeter  # noqa: E402
from temporalio.client import Client  # noqa: E402

from api.workflow_client import start_payment  # noqa: E402
from penny.client import AsyncPennyClient, PennyError, RetryEvent, new_idempotency_key  # noqa: E402
from penny.db import create_engine  # noqa: E402
from penny.keys import create_api_key  # noqa: E402
from penny.payload_converter import DATA_CONVERTER  # noqa: E402
from penny.services import free_port, stop_process  # noqa: E402
from penny.settings import Settings  # noqa: E402
from penny.stack import Stack  # noqa: E402
from workflows.payment_models import PaymentInput, SplitRecipientSpec  # noqa: E402

REQUEST_TIMEOUT_SECONDS = 60.0
# The load generator's httpx pools: CLIENTS clients of CONNECTIONS_PER_CLIENT connections, at
# most one request per connection, so IN_FLIGHT_MAX requests on the wire and none queued in
# httpcore (whose pool re-scans every queued request against every connection on each change:
# ~1000 queued on 400 connections kept one core busy without sending anything).
CLIENTS = 4
CONNECTIONS_PER_CLIENT = 50
IN_FLIGHT_MAX = CLIENTS * CONNECTIONS_PER_CLIENT
WARMUP_PAYMENTS = 20
WARMUP_BARE = 10
WORKFLOW_CONCURRENCY = 50  # as bench/payments.py
# "Sustained": answered per second at least this fraction of the offered rate, and the p50 of
# the last third of the requests at most this many times the p50 of the first third.
SUSTAIN_ANSWERED_FRACTION = 0.95
SUSTAIN_P50_GROWTH_MAX = 2.0
SEARCH_RATE_MAX = 200.0
# The targets of the requirement, printed beside the ratios.
TARGET_P99_RATIO_MAX = 3.0
TARGET_P99_RATE = 10.0
TARGET_SUSTAINED_FRACTION = 0.8


# ----------------------------------------------------------------------------- runs


@dataclass
class Sample:
    due: float  # seconds after the run's start
    latency: float  # from the due time to the answer (or the failure)
    ok: bool
    outcome: str


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@dataclass
class Run:
    label: str
    rate: float  # offered, per second; 0 for closed-loop and sequential runs
    samples: list[Sample] = field(default_factory=list)
    elapsed_seconds: float = 0.0
    retries: list[str] = field(default_factory=list)  # the client's retries' reasons
    notes: list[str] = field(default_factory=list)

    @property
    def latencies(self) -> list[float]:
        return [sample.latency for sample in self.samples if sample.ok]

    @property
    def errors(self) -> int:
        return sum(1 for sample in self.samples if not sample.ok)

    def p(self, fraction: float) -> float:
        """A latency percentile in ms (NaN without answers)."""
        latencies = self.latencies
        return percentile(latencies, fraction) * 1000 if latencies else float("nan")

    def answered_rate(self) -> float:
        """Answers per second. Open loop: the offered rate over the slope of the answer times
        against the due times (least squares; 1 when the answers keep pace with the arrivals
        whatever the latency, offered / capacity when they fall behind), times the fraction
        answered, at most the offered rate. Otherwise: answers over the run's time."""
        answered = [(sample.due, sample.due + sample.latency) for sample in self.samples if sample.ok]
        if not self.rate:
            return len(answered) / self.elapsed_seconds if self.elapsed_seconds else 0.0
        if len(answered) < 3:
            return 0.0
        due_mean = statistics.fmean(due for due, _ in answered)
        done_mean = statistics.fmean(done for _, done in answered)
        spread = sum((due - due_mean) ** 2 for due, _ in answered)
        slope = sum((due - due_mean) * (done - done_mean) for due, done in answered) / spread
        return self.rate * min(1.0, 1 / slope if slope > 0 else 1.0) * len(answered) / len(self.samples)

    def third_p50s(self) -> tuple[float, float]:
        """p50 in ms of the requests due in the first and in the last third of the run."""
        third = len(self.samples) / self.rate / 3
        first = [sample.latency for sample in self.samples if sample.ok and sample.due < third]
        last = [sample.latency for sample in self.samples if sample.ok and sample.due >= 2 * third]
        return (
            statistics.median(first) * 1000 if first else float("nan"),
            statistics.median(last) * 1000 if last else float("nan"),
        )

    def sustained(self) -> tuple[bool, str]:
        answered = self.answered_rate() / self.rate
        first, last = self.third_p50s()
        growth = last / first if first > 0 else float("inf")
        kept_up = answered >= SUSTAIN_ANSWERED_FRACTION
        flat = growth <= SUSTAIN_P50_GROWTH_MAX
        why = f"answered {answered:.2f}x offered, last-third p50 {growth:.1f}x first-third"
        return kept_up and flat, why

    def report(self) -> str:
        latencies = self.latencies
        if not latencies:
            return f"{self.label}: no answers, {self.errors} errors, outcomes {self.outcomes()}"
        line = f"{self.label}: {len(latencies)} answered"
        if self.rate:
            first, last = self.third_p50s()
            line += (
                f", {self.answered_rate():.1f}/s ({self.answered_rate() / self.rate:.2f}x offered; "
                f"all answered after {self.elapsed_seconds:.1f} s)"
            )
        else:
            line += f" in {self.elapsed_seconds:.1f} s ({self.answered_rate():.1f}/s)"
        line += (
            f", p50 {self.p(0.50):.0f} ms, p95 {self.p(0.95):.0f} ms, p99 {self.p(0.99):.0f} ms, "
            f"max {max(latencies) * 1000:.0f} ms"
        )
        if self.rate:
            line += f", p50 first/last third {first:.0f}/{last:.0f} ms"
        retries = f"{len(self.retries)} {dict(Counter(self.retries))}" if self.retries else "0"
        line += f", errors {self.errors}, client retries {retries}, outcomes {self.outcomes()}"
        return "\n    ".join([line, *self.notes])

    def outcomes(self) -> dict[str, int]:
        return dict(Counter(sample.outcome for sample in self.samples))


Send = Callable[[int], Awaitable[str]]  # sends request `index`; returns its outcome, raises on failure


def failure(error: BaseException) -> str:
    if isinstance(error, PennyError):
        return f"http_{error.status}:{error.code}" if error.status else type(error).__name__
    return type(error).__name__


async def open_loop(run: Run, seconds: float, send: Send) -> Run:
    """Request i is due at start + i / rate and sent then, whatever the earlier ones are doing;
    its latency counts from that due time (a wait for a free connection included)."""
    count = max(1, round(run.rate * seconds))
    began = time.perf_counter()

    async def one(index: int) -> None:
        due = index / run.rate
        try:
            outcome, ok = await send(index), True
        except Exception as error:
            outcome, ok = failure(error), False
        run.samples.append(Sample(due, time.perf_counter() - began - due, ok, outcome))

    tasks: list[asyncio.Task[None]] = []
    for index in range(count):
        delay = began + index / run.rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(index)))
    await asyncio.gather(*tasks)
    run.elapsed_seconds = time.perf_counter() - began
    run.samples.sort(key=lambda sample: sample.due)
    return run


async def closed_loop(run: Run, count: int, concurrency: int, send: Send) -> Run:
    """`concurrency` lanes, each sending its next request when its previous one is answered."""
    indexes = iter(range(count))
    began = time.perf_counter()

    async def lane() -> None:
        for index in indexes:
            sent = time.perf_counter()
            try:
                outcome, ok = await send(index), True
            except Exception as error:
                outcome, ok = failure(error), False
            run.samples.append(Sample(sent - began, time.perf_counter() - sent, ok, outcome))

    await asyncio.gather(*(lane() for _ in range(concurrency)))
    run.elapsed_seconds = time.perf_counter() - began
    return run


# ----------------------------------------------------------------------------- the API


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


class ApiLoad:
    """The load generator's clients: IN_FLIGHT_MAX requests at most, each on a connection of its
    own (CLIENTS pools of CONNECTIONS_PER_CLIENT), handed out first come, first served."""

    def __init__(self, base_url: str, api_key: str) -> None:
        self.base_url = base_url
        self.retries: list[str] = []  # the reason of each retry
        limits = httpx.Limits(max_connections=CONNECTIONS_PER_CLIENT, max_keepalive_connections=CONNECTIONS_PER_CLIENT)
        self.clients = [
            AsyncPennyClient(
                api_key, base_url, timeout_seconds=REQUEST_TIMEOUT_SECONDS, on_retry=self._count, limits=limits
            )
            for _ in range(CLIENTS)
        ]
        self.free: asyncio.Queue[int] = asyncio.Queue()
        for slot in range(IN_FLIGHT_MAX):
            self.free.put_nowait(slot % CLIENTS)
        # (key, body, payment id) of every answered payment: the replay path sends them again.
        self.answered: list[tuple[str, dict[str, Any], str]] = []

    def _count(self, event: RetryEvent) -> None:
        self.retries.append(event.reason)

    @asynccontextmanager
    async def lease(self) -> AsyncIterator[AsyncPennyClient]:
        index = await self.free.get()
        try:
            yield self.clients[index]
        finally:
            self.free.put_nowait(index)

    async def create(self, index: int) -> str:
        key, body = new_idempotency_key(), payment_body()
        async with self.lease() as penny:
            payment = await penny.create_payment(**body, idempotency_key=key)
        self.answered.append((key, body, payment["id"]))
        return payment["status"]

    async def server_seconds(self) -> tuple[float, float]:
        """The API's own count and total time of POST /v1/payments (its /metrics)."""
        count = total = 0.0
        try:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=10) as http:
                text = (await http.get("/metrics")).text
        except httpx.HTTPError:
            return 0.0, 0.0
        for line in text.splitlines():
            if 'route="/v1/payments"' in line and 'method="POST"' in line:
                if line.startswith("penny_api_request_duration_seconds_count"):
                    count = float(line.rsplit(" ", 1)[1])
                elif line.startswith("penny_api_request_duration_seconds_sum"):
                    total = float(line.rsplit(" ", 1)[1])
        return count, total

    async def aclose(self) -> None:
        for client in self.clients:
            await client.aclose()


async def api_run(load: ApiLoad, meter: CpuMeter, rate: float, seconds: float, label: str = "") -> Run:
    await meter.wait_quiet()
    run = Run(label or f"POST /v1/payments at {rate:g}/s for {seconds:g} s", rate)
    retried, server_before, mark = len(load.retries), await load.server_seconds(), meter.mark()
    await open_loop(run, seconds, load.create)
    run.retries = load.retries[retried:]
    server_after = await load.server_seconds()
    await meter.wait_quiet()  # the payments' steps after the first milestone count in their CPU
    served = server_after[0] - server_before[0]
    if served:
        mean = (server_after[1] - server_before[1]) / served * 1000
        client_mean = statistics.fmean(run.latencies) * 1000 if run.latencies else float("nan")
        run.notes.append(f"the API's own mean time {mean:.0f} ms of the client's mean {client_mean:.0f} ms")
    cpu = meter.per_request(mark, len(run.latencies))
    if cpu:
        run.notes.append(cpu)
    return run


async def replays(load: ApiLoad, count: int) -> tuple[Run, Run]:
    """Answered keys sent again, one after another; then a read of the same payments."""
    chosen = (load.answered * (count // max(1, len(load.answered)) + 1))[:count]
    replay = Run(f"replay (same Idempotency-Key and body), {count} sequential", 0)
    read = Run(f"GET /v1/payments/{{id}} of the same payments, {count} sequential", 0)
    retried = len(load.retries)
    async with load.lease() as penny:
        began = time.perf_counter()
        for key, body, payment_id in chosen:
            sent = time.perf_counter()
            payment = await penny.create_payment(**body, idempotency_key=key)
            same = payment["id"] == payment_id
            replay.samples.append(Sample(0, time.perf_counter() - sent, same, "same payment" if same else "another"))
        replay.elapsed_seconds = time.perf_counter() - began
        replay.retries = load.retries[retried:]
        retried = len(load.retries)
        began = time.perf_counter()
        for _, _, payment_id in chosen:
            sent = time.perf_counter()
            payment = await penny.retrieve_payment(payment_id)
            found = payment["id"] == payment_id
            read.samples.append(Sample(0, time.perf_counter() - sent, found, "found" if found else "another"))
        read.elapsed_seconds = time.perf_counter() - began
        read.retries = load.retries[retried:]
    return replay, read


# ----------------------------------------------------------------------------- the search


@dataclass
class Search:
    """The highest sustained rate: the fixed-rate runs count, then short runs bisect."""

    tried: dict[float, tuple[bool, str, bool]] = field(default_factory=dict)  # rate → (sustained, why, short)

    def record(self, run: Run, short: bool) -> None:
        sustained, why = run.sustained()
        self.tried[run.rate] = (sustained, why, short)

    def bounds(self) -> tuple[float, float | None]:
        held = [rate for rate, (ok, _, _) in self.tried.items() if ok]
        low = max(held, default=0.0)
        failed = [rate for rate, (ok, _, _) in self.tried.items() if not ok and rate > low]
        return low, min(failed, default=None)

    def next_rate(self) -> float | None:
        low, high = self.bounds()
        if high is None:
            candidate = low * 1.5 if low else 10.0
            return candidate if candidate <= SEARCH_RATE_MAX else None
        resolution = max(1.0, 0.1 * low)
        if high - low <= resolution:
            return None
        candidate = round(low + high) / 2  # to half a request per second
        return candidate if low < candidate < high and candidate not in self.tried else None

    def describe(self) -> str:
        return ", ".join(
            f"{rate:g}/s {'held' if ok else 'not held'} ({why}{'; short run' if short else ''})"
            for rate, (ok, why, short) in sorted(self.tried.items())
        )


# ----------------------------------------------------------------------------- baselines


async def workflow_throughput(client: Client, settings: Settings, meter: CpuMeter, count: int) -> Run:
    """Payments started as the API starts them, straight into Temporal (no HTTP, no API)."""
    run_id = uuid.uuid4().hex[:8]

    def send_for(prefix: str) -> Send:
        async def send(index: int) -> str:
            payment = PaymentInput(
                order_id=f"bench_{prefix}_{run_id}_{index}",
                amount=2500,
                currency="USD",
                customer=f"cus_{uuid.uuid4().hex[:12]}",
                payment_method="pm_card_visa",
                recipients=[SplitRecipientSpec("acct_bench_seller", share_bps=10_000)],
                platform_fee_bps=1000,
            )
            return (await start_payment(client, settings, payment)).status.lower()

        return send

    await closed_loop(Run("workflow warm-up", 0), WARMUP_PAYMENTS, WARMUP_PAYMENTS, send_for("wfwarm"))
    await meter.wait_quiet()
    run = Run(
        f"payment-workflow throughput (start_payment to the first milestone, no API; "
        f"closed loop, {WORKFLOW_CONCURRENCY} at a time): {count} payments",
        0,
    )
    mark = meter.mark()
    await closed_loop(run, count, WORKFLOW_CONCURRENCY, send_for("wf"))
    await meter.wait_quiet()
    cpu = meter.per_request(mark, len(run.latencies))
    if cpu:
        run.notes.append(cpu)
    return run


async def bare_runs(
    client: Client, settings: Settings, temporal_pid: int | None, rates: list[float], seconds: float
) -> dict[float, Run]:
    """The bare round trip at each rate: its worker in its own process on its own task queue."""
    run_id = uuid.uuid4().hex[:8]
    queue = f"bench-api-bare-{run_id}"
    in_flight = asyncio.Semaphore(IN_FLIGHT_MAX)  # the API's load generator's bound, for the same timing

    def send_for(prefix: str) -> Send:
        async def send(index: int) -> str:
            async with in_flight:
                await start_to_milestone(client, f"bare-{run_id}-{prefix}-{index}", queue)
            return "first milestone"

        return send

    worker = subprocess.Popen(
        [sys.executable, str(ROOT / "bench" / "_bare_workflow.py"), settings.effective_temporal_address, queue],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    meter = CpuMeter(lambda: {"bare worker": worker.pid, "temporal": temporal_pid, LOAD_GENERATOR: os.getpid()})
    results: dict[float, Run] = {}
    try:
        await open_loop(Run("bare warm-up", 10), WARMUP_BARE / 10, send_for("warm"))
        print(f"bare worker started; idle, cores: {await meter.measure_idle()}", flush=True)
        for rate in rates:
            await meter.wait_quiet()
            run = Run(f"bare start_workflow + first milestone at {rate:g}/s for {seconds:g} s", rate)
            mark = meter.mark()
            await open_loop(run, seconds, send_for(f"{rate:g}"))
            await meter.wait_quiet()
            cpu = meter.per_request(mark, len(run.latencies))
            if cpu:
                run.notes.append(cpu)
            results[rate] = run
            print(run.report(), flush=True)
    finally:
        stop_process(worker)
    return results


# ----------------------------------------------------------------------------- the benchmark


async def make_key(settings: Settings) -> str:
    engine = create_engine(settings.effective_database_url, pool_size=1)
    try:
        async with engine.begin() as connection:
            return await create_api_key(connection, "merchant", "bench", pepper=settings.api_key_pepper)
    finally:
        await engine.dispose()


def held_or_not(run: Run) -> str:
    held, why = run.sustained()
    return f"  -> {'sustained' if held else 'not sustained'}: {why}"


def ratio(value: float, baseline: float) -> str:
    return "n/a" if math.isnan(value) or math.isnan(baseline) or not baseline else f"{value / baseline:.2f}x"


async def measure(stack: Stack, args: argparse.Namespace) -> None:
    settings = stack.settings
    rates = [float(rate) for rate in args.rates.split(",") if rate.strip()]
    load = ApiLoad(f"http://{settings.host}:{settings.api_port}", await make_key(settings))
    # The workflow-throughput baseline starts payments as the API does, with the API's converter.
    client = await Client.connect(
        settings.effective_temporal_address, namespace=settings.temporal_namespace, data_converter=DATA_CONVERTER
    )

    def stack_parts() -> dict[str, int | None]:
        parts = {name: pid for name, pid in stack.pids().items()}
        parts[LOAD_GENERATOR] = os.getpid()
        return parts

    meter = CpuMeter(stack_parts)
    try:
        warmup = Run("warm-up", 10)
        await open_loop(warmup, WARMUP_PAYMENTS / 10, load.create)
        print(warmup.report(), flush=True)
        print(
            f"idle stack, cores (subtracted from the CPU per request below): {await meter.measure_idle()}", flush=True
        )

        workflow: Run | None = None
        if args.workflow_payments:
            workflow = await workflow_throughput(client, settings, meter, args.workflow_payments)
            print(workflow.report(), flush=True)

        api: dict[float, Run] = {}
        search = Search()
        for rate in rates:
            api[rate] = await api_run(load, meter, rate, args.seconds)
            search.record(api[rate], short=False)
            print(f"{api[rate].report()}\n{held_or_not(api[rate])}", flush=True)
        for _ in range(args.search_steps if args.search_seconds > 0 else 0):
            candidate = search.next_rate()
            if candidate is None:
                break
            run = await api_run(load, meter, candidate, args.search_seconds, f"search: {candidate:g}/s")
            search.record(run, short=True)
            print(f"{run.report()}\n{held_or_not(run)}", flush=True)
        sustained_rate = search.bounds()[0] or None
        if sustained_rate is not None and sustained_rate not in api:
            # Found in a short run: measured again for as long as the fixed rates.
            api[sustained_rate] = await api_run(load, meter, sustained_rate, args.seconds)
            print(f"{api[sustained_rate].report()}\n{held_or_not(api[sustained_rate])}", flush=True)

        replay: tuple[Run, Run] | None = None
        if args.replays and load.answered:
            await meter.wait_quiet()
            replay = await replays(load, args.replays)
            print(replay[0].report(), flush=True)
            print(replay[1].report(), flush=True)

        await meter.wait_quiet()
        bare = await bare_runs(client, settings, stack.pids().get("temporal"), sorted(api), args.seconds)

        print("\nSummary (each API figure beside the bare Temporal round trip at the same arrival rate, same run):")
        print(
            f"  {'offered':>8}  {'API answered':>17}  {'API p50':>9}  {'API p99':>9}  {'bare p50':>9}  {'bare p99':>9}"
            "  p99 API/bare"
        )
        for rate in sorted(api):
            run, base = api[rate], bare.get(rate)
            answered = f"{run.answered_rate():.1f}/s " + ("held" if run.sustained()[0] else "not held")
            base_p50 = base.p(0.50) if base else float("nan")
            base_p99 = base.p(0.99) if base else float("nan")
            print(
                f"  {rate:>6g}/s  {answered:>17}  {run.p(0.50):7.0f}ms  {run.p(0.99):7.0f}ms  {base_p50:7.0f}ms"
                f"  {base_p99:7.0f}ms  {ratio(run.p(0.99), base_p99)}"
            )
        if TARGET_P99_RATE in api and TARGET_P99_RATE in bare:
            value = api[TARGET_P99_RATE].p(0.99) / bare[TARGET_P99_RATE].p(0.99)
            verdict = "met" if value <= TARGET_P99_RATIO_MAX else "NOT met"
            print(
                f"  target at {TARGET_P99_RATE:g}/s: p99(API) <= {TARGET_P99_RATIO_MAX:g}x p99(bare): "
                f"{value:.2f}x, {verdict}"
            )
        print(f"  rates tried: {search.describe()}")
        if sustained_rate is not None:
            longer = api[sustained_rate].sustained()
            held = "" if longer[0] else f" (held in its {args.search_seconds:g} s run, not over {args.seconds:g} s)"
            line = f"  highest rate sustained: {sustained_rate:g}/s{held}"
            if workflow is not None:
                throughput = workflow.answered_rate()
                value = sustained_rate / throughput if throughput else float("nan")
                verdict = "met" if value >= TARGET_SUSTAINED_FRACTION else "NOT met"
                line += (
                    f" vs payment-workflow throughput {throughput:.1f}/s: {value:.2f}x "
                    f"(target >= {TARGET_SUSTAINED_FRACTION:g}x), {verdict}"
                )
            print(line)
        else:
            print("  no rate tried was sustained")
        if replay:
            got, base = replay
            print(
                f"  replay p50 {got.p(0.5):.1f} ms, p99 {got.p(0.99):.1f} ms, {got.answered_rate():.0f}/s sequential "
                f"vs GET p50 {base.p(0.5):.1f} ms, p99 {base.p(0.99):.1f} ms, {base.answered_rate():.0f}/s: "
                f"p50 {ratio(got.p(0.5), base.p(0.5))}, p99 {ratio(got.p(0.99), base.p(0.99))}"
            )
    finally:
        await load.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rates", default="10,20", help="fixed arrival rates per second, comma-separated")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each fixed rate (and bare run)")
    parser.add_argument("--search-seconds", type=float, default=10.0, help="duration of a search run; 0: no search")
    parser.add_argument("--search-steps", type=int, default=4, help="most search runs")
    parser.add_argument("--workflow-payments", type=int, default=200, help="payments of the workflow baseline")
    parser.add_argument("--replays", type=int, default=300, help="replayed requests (and reads)")
    args = parser.parse_args()

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
                # Not the default ports: another stack on this machine may hold them.
                "PENNY_WORKER_METRICS_PORT": str(free_port()),
                "PENNY_WORKER_TEMPORAL_METRICS_PORT": str(free_port()),
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
            asyncio.run(measure(stack, args))
        finally:
            stack.stop()


if __name__ == "__main__":
    main()
