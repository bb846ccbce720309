"""What the ops dashboard (`/ops`, api/ops_dashboard.py) shows, read from Postgres: the ops
snapshot (penny/ops_monitor.py, not repeated here), payments per hour by status, the success
rate, the newest open review items, recent reconciliation runs (penny/reconciliation_reports.py),
webhook delays and duplicate deliveries.

Definitions (the page states them too):
- Window: the last PAYMENT_WINDOW_HOURS whole hours, the current one included (UTC hours).
- Payments over time: payments *created* in each hour, by their *current* status.
- Success rate: among payments created in the window that reached an outcome, the share whose
  charge succeeded (SUCCEEDED_STATUSES: captured, or anything that can only follow a capture)
  against FAILED. Payments still in flight, authorized, canceled or in review are not counted.
- Webhook delay: `received_at - event_created_at` (Stripe's `created`) of the events stored in
  the window; median, 95th percentile and maximum are actual values (`percentile_disc`).
- Duplicate deliveries: the inbox keeps one row per event id, so repeats leave no row; they are
  counted by `penny_webhook_duplicates_total` in the API process that received them. The page
  shows this process's counters since it started (sum them across replicas in Prometheus).

The ledger's `verify()` reads the whole ledger, so a page load runs it at most once per
LEDGER_VERIFY_MIN_INTERVAL_SECONDS per process (`LedgerCheckCache`) and shows when it ran.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api import review_queue
from api.models import Review
from penny import reconciliation_reports as reports
from penny import webhook_metrics
from penny.ops_monitor import LedgerCheck, OpsSnapshot, check_ledger, take_snapshot
from penny.settings import Settings

PAYMENT_WINDOW_HOURS = 24
REVIEW_ITEMS_SHOWN_MAX = 25
RECONCILIATION_RUNS_SHOWN_MAX = 10
LEDGER_VERIFY_MIN_INTERVAL_SECONDS = 60.0
QUERY_STATEMENT_TIMEOUT_MS = 20_000
SUCCEEDED_STATUSES = ("CAPTURED", "SETTLED", "PARTIALLY_REFUNDED", "REFUNDED", "DISPUTED", "REVERSED")
FAILED_STATUSES = ("FAILED",)


@dataclass(frozen=True)
class HourBucket:
    hour_start: datetime
    counts_by_status: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.counts_by_status.values())


@dataclass(frozen=True)
class PaymentWindow:
    window_start: datetime
    hours: list[HourBucket]  # PAYMENT_WINDOW_HOURS buckets, oldest first, empty hours included
    succeeded: int
    failed: int

    @property
    def success_rate_percent(self) -> float | None:
        decided = self.succeeded + self.failed
        return 100.0 * self.succeeded / decided if decided else None

    @property
    def totals_by_status(self) -> dict[str, int]:
        totals: dict[str, int] = {}
        for hour in self.hours:
            for status, count in hour.counts_by_status.items():
                totals[status] = totals.get(status, 0) + count
        return totals


@dataclass(frozen=True)
class WebhookStats:
    stored: int  # events stored in the window
    delay_median_seconds: float | None
    delay_p95_seconds: float | None
    delay_max_seconds: float | None
    verified_in_process: int  # penny_webhook_verified_total of this process
    duplicates_in_process: int  # penny_webhook_duplicates_total of this process

    @property
    def duplicate_rate_percent(self) -> float | None:
        if not self.verified_in_process:
            return None
        return 100.0 * self.duplicates_in_process / self.verified_in_process


@dataclass(frozen=True)
class DashboardData:
    snapshot: OpsSnapshot
    payments: PaymentWindow
    open_reviews: list[Review]  # newest first, at most REVIEW_ITEMS_SHOWN_MAX
    runs: list[reports.RunView]  # newest first, at most RECONCILIATION_RUNS_SHOWN_MAX
    webhooks: WebhookStats


class LedgerCheckCache:
    """The last ledger check of this process, renewed when older than the interval. One check at a
    time: concurrent page loads wait for the running one instead of starting their own."""

    def __init__(self, interval_seconds: float = LEDGER_VERIFY_MIN_INTERVAL_SECONDS) -> None:
        self.interval_seconds = interval_seconds
        self._check: LedgerCheck | None = None
        self._checked_monotonic = float("-inf")
        self._lock = asyncio.Lock()

    async def get(self, engine: AsyncEngine) -> LedgerCheck:
        async with self._lock:
            if self._check is None or time.monotonic() - self._checked_monotonic >= self.interval_seconds:
                self._check = await check_ledger(engine)
                self._checked_monotonic = time.monotonic()
            return self._check


def window_start(now: datetime) -> datetime:
    """The first hour of the window that ends with the hour of `now`."""
    return now.astimezone(UTC).replace(minute=0, second=0, microsecond=0) - timedelta(hours=PAYMENT_WINDOW_HOURS - 1)


async def payment_window(engine: AsyncEngine, now: datetime) -> PaymentWindow:
    start = window_start(now)
    async with engine.connect() as connection:
        await connection.execute(text("SET TRANSACTION READ ONLY"))
        await connection.execute(text(f"SET LOCAL statement_timeout = {QUERY_STATEMENT_TIMEOUT_MS}"))
        rows = (
            await connection.execute(
                text(
                    "SELECT date_trunc('hour', created_at AT TIME ZONE 'UTC') AS hour, status, count(*) AS created "
                    "FROM payments WHERE created_at >= :start AND created_at < :end GROUP BY 1, 2"
                ),
                {"start": start, "end": start + timedelta(hours=PAYMENT_WINDOW_HOURS)},
            )
        ).all()
        await connection.rollback()
    by_hour: dict[datetime, dict[str, int]] = {}
    for row in rows:
        hour = row.hour.replace(tzinfo=UTC)
        by_hour.setdefault(hour, {})[str(row.status)] = int(row.created)
    hours = [
        HourBucket(hour, by_hour.get(hour, {}))
        for hour in (start + timedelta(hours=index) for index in range(PAYMENT_WINDOW_HOURS))
    ]
    assert set(by_hour) <= {bucket.hour_start for bucket in hours}, "an hour outside the window was read"
    shown = PaymentWindow(start, hours, 0, 0).totals_by_status
    return PaymentWindow(
        window_start=start,
        hours=hours,
        succeeded=sum(shown.get(status, 0) for status in SUCCEEDED_STATUSES),
        failed=sum(shown.get(status, 0) for status in FAILED_STATUSES),
    )


def counter_total(counter: Counter) -> int:
    """The sum of a labelled counter over its labels, in this process."""
    return int(
        sum(sample.value for metric in counter.collect() for sample in metric.samples if sample.name.endswith("_total"))
    )


async def webhook_stats(engine: AsyncEngine, start: datetime) -> WebhookStats:
    async with engine.connect() as connection:
        await connection.execute(text("SET TRANSACTION READ ONLY"))
        await connection.execute(text(f"SET LOCAL statement_timeout = {QUERY_STATEMENT_TIMEOUT_MS}"))
        row = (
            await connection.execute(
                text(
                    """
                    SELECT count(*) AS stored,
                           percentile_disc(0.5) WITHIN GROUP (ORDER BY delay) AS median,
                           percentile_disc(0.95) WITHIN GROUP (ORDER BY delay) AS p95,
                           max(delay) AS maximum
                      FROM (SELECT extract(epoch FROM received_at - event_created_at)::float8 AS delay
                              FROM webhook_events WHERE received_at >= :start) AS delays
                    """
                ),
                {"start": start},
            )
        ).one()
        await connection.rollback()
    return WebhookStats(
        stored=int(row.stored),
        delay_median_seconds=row.median,
        delay_p95_seconds=row.p95,
        delay_max_seconds=row.maximum,
        verified_in_process=counter_total(webhook_metrics.VERIFIED),
        duplicates_in_process=counter_total(webhook_metrics.DUPLICATES),
    )


async def dashboard_data(engine: AsyncEngine, settings: Settings, ledger_checks: LedgerCheckCache) -> DashboardData:
    snapshot = await take_snapshot(engine, settings, with_ledger=False)
    snapshot.ledger = await ledger_checks.get(engine)
    payments = await payment_window(engine, snapshot.taken_at)
    open_reviews, _ = await review_queue.list_reviews(
        engine, kind=None, status="open", payment_id=None, limit=REVIEW_ITEMS_SHOWN_MAX, starting_after=None
    )
    runs = await reports.list_runs(engine, RECONCILIATION_RUNS_SHOWN_MAX)
    webhooks = await webhook_stats(engine, payments.window_start)
    return DashboardData(snapshot, payments, list(open_reviews), runs, webhooks)
