"""What the people on call look at: one snapshot of the consistency risks, read from Postgres.

`take_snapshot` reads, in one read-only transaction, payments by status, payments stuck in a
status that should move within minutes, open review items by kind, stored Stripe events not
yet delivered to their workflows, outbox events not yet delivered to subscribers (and dead
ones), and, when asked, the ledger's own `verify()`. Three readers share it:

- the worker's monitor loop (`monitor_forever`, started by worker.py) exports it as Prometheus
  gauges every PENNY_OPS_MONITOR_INTERVAL_SECONDS (the ledger check every
  PENNY_LEDGER_VERIFY_INTERVAL_SECONDS: it reads the whole ledger);
- `penny status` prints it;
- the ops dashboard (`/ops`) renders it.

Gauges are set, never incremented, so several workers exporting the same snapshot agree, and a
restarted worker is right at its first round. Labels are bounded: statuses, review kinds and
ledger finding codes are small fixed vocabularies; never an id.

Stuck: a payment in CREATED or PROCESSING whose row has not changed for
PENNY_STUCK_AFTER_SECONDS. Both should move within minutes (the workflow polls Stripe and goes
to NEEDS_REVIEW after its limits), so one there for an hour means a workflow is not running. The
statuses that legitimately wait (REQUIRES_ACTION for the customer, AUTHORIZED for a capture,
CAPTURED for settlement) have their own deadlines in the workflow, which open review items.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime

from prometheus_client import Gauge
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.ledger import verify
from penny.settings import Settings

logger = logging.getLogger("penny.ops")

STUCK_STATUSES = ("CREATED", "PROCESSING")
# A snapshot's queries may not hold a connection longer than this (a locked table, a huge ledger).
SNAPSHOT_STATEMENT_TIMEOUT_MS = 20_000
LEDGER_VERIFY_STATEMENT_TIMEOUT_MS = 120_000

PAYMENTS = Gauge("penny_payments", "Payments by current status.", ["status"])
PAYMENTS_STUCK = Gauge(
    "penny_payments_stuck",
    "Payments in CREATED or PROCESSING unchanged for longer than PENNY_STUCK_AFTER_SECONDS, by status.",
    ["status"],
)
REVIEW_QUEUE_DEPTH = Gauge("penny_review_queue_depth", "Open review items, by kind.", ["kind"])
WEBHOOK_UNDELIVERED = Gauge(
    "penny_webhook_events_undelivered", "Stored Stripe events not yet delivered to their workflow (received)."
)
OUTBOX_UNDELIVERED = Gauge(
    "penny_outbox_events_undelivered", "Outbox events unpublished or with a pending delivery to a subscriber."
)
OUTBOX_DEAD = Gauge("penny_outbox_deliveries_dead", "Outbox deliveries dead-lettered and not redelivered.")
LEDGER_IMBALANCE = Gauge(
    "penny_ledger_verify_findings",
    "Problems the ledger's verify() found at its last run, by code (0 everywhere: the ledger is consistent). "
    "Alert on any non-zero value.",
    ["code"],
)
LEDGER_VERIFY_LAST = Gauge("penny_ledger_verify_last_run_timestamp_seconds", "Unix time of the last ledger verify().")
LEDGER_VERIFY_SECONDS = Gauge("penny_ledger_verify_duration_seconds", "How long the last ledger verify() took.")
SNAPSHOT_LAST = Gauge("penny_ops_snapshot_last_timestamp_seconds", "Unix time of the last ops snapshot.")

# Every code verify() can report, so each series exists (at 0) before the first problem.
LEDGER_FINDING_CODES = (
    "unbalanced_entry",
    "malformed_entry",
    "ledger_unbalanced",
    "balance_mismatch",
    "limit_crossed",
    "currency_mismatch",
    "resolution_exceeds_pending",
    "verify_failed",
)


@dataclass
class LedgerCheck:
    findings_by_code: dict[str, int]
    examples: list[str]
    checked_at: datetime
    duration_seconds: float

    @property
    def ok(self) -> bool:
        return not any(self.findings_by_code.values())


@dataclass
class OpsSnapshot:
    taken_at: datetime
    payments_by_status: dict[str, int]
    stuck_by_status: dict[str, int]
    review_open_by_kind: dict[str, int]
    webhook_undelivered: int
    outbox_undelivered: int
    outbox_dead: int
    ledger: LedgerCheck | None = None
    notes: list[str] = field(default_factory=list)


async def _counts(connection: AsyncConnection, sql: str, values: dict[str, object] | None = None) -> dict[str, int]:
    return {str(row[0]): int(row[1]) for row in await connection.execute(text(sql), values or {})}


async def check_ledger(engine: AsyncEngine) -> LedgerCheck:
    began = time.monotonic()
    async with engine.connect() as connection:
        await connection.execute(text(f"SET LOCAL statement_timeout = {LEDGER_VERIFY_STATEMENT_TIMEOUT_MS}"))
        findings = await verify(connection)
        await connection.rollback()
    return LedgerCheck(
        findings_by_code=dict(Counter(finding.code for finding in findings)),
        examples=[f"{finding.code}: {finding.message}" for finding in findings[:5]],
        checked_at=datetime.now(UTC),
        duration_seconds=time.monotonic() - began,
    )


async def take_snapshot(engine: AsyncEngine, settings: Settings, *, with_ledger: bool = False) -> OpsSnapshot:
    async with engine.connect() as connection:
        await connection.execute(text("SET TRANSACTION READ ONLY"))
        await connection.execute(text(f"SET LOCAL statement_timeout = {SNAPSHOT_STATEMENT_TIMEOUT_MS}"))
        payments = await _counts(connection, "SELECT status, count(*) FROM payments GROUP BY status")
        stuck = await _counts(
            connection,
            "SELECT status, count(*) FROM payments WHERE status = ANY(:statuses) "
            "AND updated_at < now() - make_interval(secs => :after) GROUP BY status",
            {"statuses": list(STUCK_STATUSES), "after": settings.stuck_after_seconds},
        )
        reviews = await _counts(
            connection, "SELECT kind, count(*) FROM review_items WHERE status = 'open' GROUP BY kind"
        )
        webhooks = (
            await connection.execute(text("SELECT count(*) FROM webhook_events WHERE status = 'received'"))
        ).scalar_one()
        outbox_undelivered = (
            await connection.execute(
                text(
                    """
                    SELECT (SELECT count(*) FROM outbox WHERE published_at IS NULL)
                         + (SELECT count(DISTINCT outbox_id) FROM outbox_deliveries WHERE status = 'pending')
                    """
                )
            )
        ).scalar_one()
        dead = (
            await connection.execute(text("SELECT count(*) FROM outbox_deliveries WHERE status = 'dead'"))
        ).scalar_one()
        await connection.rollback()
    snapshot = OpsSnapshot(
        taken_at=datetime.now(UTC),
        payments_by_status=payments,
        stuck_by_status=stuck,
        review_open_by_kind=reviews,
        webhook_undelivered=int(webhooks),
        outbox_undelivered=int(outbox_undelivered),
        outbox_dead=int(dead),
    )
    if with_ledger:
        snapshot.ledger = await check_ledger(engine)
    return snapshot


_EXPORTED: dict[str, set[str]] = {"payments": set(), "reviews": set()}


def export(snapshot: OpsSnapshot) -> None:
    """Set the gauges from `snapshot`; a status or kind seen before and gone now reads 0."""
    for status in _EXPORTED["payments"] | set(snapshot.payments_by_status):
        PAYMENTS.labels(status=status).set(snapshot.payments_by_status.get(status, 0))
    _EXPORTED["payments"] |= set(snapshot.payments_by_status)
    for status in STUCK_STATUSES:
        PAYMENTS_STUCK.labels(status=status).set(snapshot.stuck_by_status.get(status, 0))
    for kind in _EXPORTED["reviews"] | set(snapshot.review_open_by_kind):
        REVIEW_QUEUE_DEPTH.labels(kind=kind).set(snapshot.review_open_by_kind.get(kind, 0))
    _EXPORTED["reviews"] |= set(snapshot.review_open_by_kind)
    WEBHOOK_UNDELIVERED.set(snapshot.webhook_undelivered)
    OUTBOX_UNDELIVERED.set(snapshot.outbox_undelivered)
    OUTBOX_DEAD.set(snapshot.outbox_dead)
    if snapshot.ledger is not None:
        for code in set(LEDGER_FINDING_CODES) | set(snapshot.ledger.findings_by_code):
            LEDGER_IMBALANCE.labels(code=code).set(snapshot.ledger.findings_by_code.get(code, 0))
        LEDGER_VERIFY_LAST.set(snapshot.ledger.checked_at.timestamp())
        LEDGER_VERIFY_SECONDS.set(snapshot.ledger.duration_seconds)
    SNAPSHOT_LAST.set(snapshot.taken_at.timestamp())


async def monitor_once(engine: AsyncEngine, settings: Settings, *, with_ledger: bool) -> OpsSnapshot:
    snapshot = await take_snapshot(engine, settings, with_ledger=with_ledger)
    export(snapshot)
    if snapshot.ledger is not None and not snapshot.ledger.ok:
        logger.error("ledger verify found problems: %s", "; ".join(snapshot.ledger.examples))
    return snapshot


async def monitor_forever(engine: AsyncEngine, settings: Settings) -> None:
    """The worker's loop: a snapshot every PENNY_OPS_MONITOR_INTERVAL_SECONDS, the ledger check
    every PENNY_LEDGER_VERIFY_INTERVAL_SECONDS. A failed round is logged and tried again next time."""
    last_verify = float("-inf")
    while True:
        with_ledger = time.monotonic() - last_verify >= settings.ledger_verify_interval_seconds
        try:
            await monitor_once(engine, settings, with_ledger=with_ledger)
            if with_ledger:
                last_verify = time.monotonic()
        except Exception as error:  # the monitor must never take the worker down
            logger.warning("ops snapshot failed: %s", error)
        await asyncio.sleep(settings.ops_monitor_interval_seconds)
