"""`penny status` and `penny ops stuck`: the on-call views in a terminal.

`penny status` checks each part of the running stack (PostgreSQL, Temporal, Stripe, the API, a
worker polling the task queue), then prints the ops snapshot (penny/ops_monitor.py): payments by
status, stuck payments, the review queue by kind, undelivered webhooks and outbox events, the
ledger's verify() and the last reconciliation run. Exit code 0 when every part answers and the
ledger verifies; 1 otherwise, so scripts and cron can use it.

`penny ops stuck` runs the README's ready-made Temporal visibility queries ("Finding a payment in
the Temporal UI") and prints one table: the query, workflow id, order, status, amount, start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.api.enums.v1 import TaskQueueType
from temporalio.api.taskqueue.v1 import TaskQueue
from temporalio.api.workflowservice.v1 import DescribeTaskQueueRequest
from temporalio.client import Client

from penny.ops_monitor import STUCK_STATUSES, OpsSnapshot, take_snapshot
from penny.settings import Settings
from workflows import search_attributes

STATUS_CHECK_TIMEOUT_SECONDS = 3.0
STUCK_LISTED_MAX = 100  # rows per query in `penny ops stuck`


@dataclass(frozen=True)
class Part:
    name: str
    ok: bool
    detail: str


def _quote(value: str) -> str:
    # json.dumps quotes and escapes like the visibility query language's string literals.
    return json.dumps(value)


def stuck_queries(
    settings: Settings, now: datetime, *, customer: str | None = None, order: str | None = None
) -> list[tuple[str, str]]:
    """(name, visibility query) pairs `penny ops stuck` runs; the README lists the same ones."""
    since = (now - timedelta(seconds=settings.stuck_after_seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")
    statuses = ", ".join(_quote(status) for status in STUCK_STATUSES)
    scope = ""
    if customer is not None:
        scope += f" AND CustomerId = {_quote(customer)}"
    if order is not None:
        scope += f" AND OrderId = {_quote(order)}"
    running = 'ExecutionStatus = "Running"'
    return [
        ("stuck", f'{running} AND PaymentStatus IN ({statuses}) AND StartTime < "{since}"{scope}'),
        ("needs_review", f'{running} AND PaymentStatus = "NEEDS_REVIEW"{scope}'),
        ("disputed", f'{running} AND PaymentStatus = "DISPUTED"{scope}'),
    ]


async def _temporal(settings: Settings) -> Client:
    return await asyncio.wait_for(
        Client.connect(settings.effective_temporal_address, namespace=settings.temporal_namespace),
        STATUS_CHECK_TIMEOUT_SECONDS,
    )


async def check_parts(settings: Settings, engine: AsyncEngine) -> list[Part]:
    parts: list[Part] = []
    try:
        async with asyncio.timeout(STATUS_CHECK_TIMEOUT_SECONDS):
            async with engine.connect() as connection:
                version = (await connection.execute(text("SHOW server_version"))).scalar_one()
        parts.append(Part("postgres", True, f"PostgreSQL {version}"))
    except Exception as error:
        parts.append(Part("postgres", False, f"{type(error).__name__}: {error}"[:200]))
    try:
        client = await _temporal(settings)
        described = await client.workflow_service.describe_task_queue(
            DescribeTaskQueueRequest(
                namespace=settings.temporal_namespace,
                task_queue=TaskQueue(name=settings.temporal_task_queue),
                task_queue_type=TaskQueueType.TASK_QUEUE_TYPE_WORKFLOW,
            ),
            timeout=timedelta(seconds=STATUS_CHECK_TIMEOUT_SECONDS),
        )
        parts.append(Part("temporal", True, f"{settings.effective_temporal_address} namespace {client.namespace}"))
        pollers = {poller.identity for poller in described.pollers}
        parts.append(
            Part(
                "worker",
                bool(pollers),
                f"{len(pollers)} polling task queue {settings.temporal_task_queue!r}"
                if pollers
                else f"no worker polls task queue {settings.temporal_task_queue!r}",
            )
        )
    except Exception as error:
        parts.append(Part("temporal", False, f"{settings.effective_temporal_address}: {type(error).__name__}"))
        parts.append(Part("worker", False, "unknown (Temporal unreachable)"))
    async with httpx.AsyncClient(timeout=STATUS_CHECK_TIMEOUT_SECONDS) as http:
        api_url = f"http://{settings.host}:{settings.api_port}"
        try:
            ready = await http.get(f"{api_url}/readyz")
            parts.append(Part("api", ready.status_code == 200, f"{api_url} /readyz {ready.status_code}"))
        except httpx.HTTPError as error:
            parts.append(Part("api", False, f"{api_url}: {type(error).__name__}"))
        if settings.runs_embedded_emulator:
            base = settings.effective_stripe_api_base
            try:
                health = await http.get(f"{base}/health")
                parts.append(Part("stripe", health.status_code == 200, f"emulator at {base}"))
            except httpx.HTTPError as error:
                parts.append(Part("stripe", False, f"emulator at {base}: {type(error).__name__}"))
        else:
            parts.append(Part("stripe", True, f"configured: {settings.effective_stripe_api_base} (not called)"))
    return parts


async def last_reconciliation(engine: AsyncEngine) -> str:
    """One line about the newest reconciliation run, if the reconciliation tables exist."""
    async with engine.connect() as connection:
        exists = (await connection.execute(text("SELECT to_regclass('reconciliation_runs')"))).scalar_one()
        if exists is None:
            return "none (no reconciliation_runs table)"
        row = (
            await connection.execute(text("SELECT * FROM reconciliation_runs ORDER BY started_at DESC LIMIT 1"))
        ).first()
    if row is None:
        return "never run"
    values = row._mapping
    fields = [f"{name} {values[name]}" for name in ("id", "status", "window_start", "window_end") if name in values]
    counts = values.get("counts")
    if isinstance(counts, dict):
        mismatched = sum(int(count) for name, count in counts.items() if name != "matched")
        fields.append(f"{mismatched} mismatched, {int(counts.get('matched', 0))} matched")
    return ", ".join(str(field) for field in fields)


def _line(counts: dict[str, int]) -> str:
    return " · ".join(f"{name} {count}" for name, count in sorted(counts.items())) or "none"


def render_status(parts: Sequence[Part], snapshot: OpsSnapshot | None, reconciliation: str, settings: Settings) -> str:
    lines = [f"Penny status at {datetime.now(UTC).strftime('%Y-%m-%d %H:%M:%SZ')}", "", "parts"]
    lines.extend(f"  {'✓' if part.ok else '✗'} {part.name:<9} {part.detail}" for part in parts)
    if snapshot is None:
        lines.append("\n(no snapshot: the database is unreachable)")
        return "\n".join(lines)
    total = sum(snapshot.payments_by_status.values())
    stuck = sum(snapshot.stuck_by_status.values())
    open_items = sum(snapshot.review_open_by_kind.values())
    lines += [
        "",
        f"payments        {total}: {_line(snapshot.payments_by_status)}",
        f"stuck           {stuck} in {'/'.join(STUCK_STATUSES)} unchanged > {settings.stuck_after_seconds} s"
        + (f": {_line(snapshot.stuck_by_status)}" if stuck else ""),
        f"review queue    {open_items} open: {_line(snapshot.review_open_by_kind)}",
        f"webhooks        {snapshot.webhook_undelivered} stored events not yet delivered to their workflow",
        f"outbox          {snapshot.outbox_undelivered} events undelivered, {snapshot.outbox_dead} dead deliveries",
    ]
    if snapshot.ledger is not None:
        if snapshot.ledger.ok:
            lines.append(f"ledger          verify ok ({snapshot.ledger.duration_seconds:.2f} s)")
        else:
            lines.append(f"ledger          VERIFY FOUND PROBLEMS: {_line(snapshot.ledger.findings_by_code)}")
            lines.extend(f"                  {example}" for example in snapshot.ledger.examples)
    lines.append(f"reconciliation  last run: {reconciliation}")
    return "\n".join(lines)


async def status(settings: Settings, engine: AsyncEngine) -> tuple[str, bool]:
    parts = await check_parts(settings, engine)
    snapshot: OpsSnapshot | None = None
    reconciliation = "unknown"
    if any(part.ok for part in parts if part.name == "postgres"):
        snapshot = await take_snapshot(engine, settings, with_ledger=True)
        reconciliation = await last_reconciliation(engine)
    healthy = (
        all(part.ok for part in parts) and snapshot is not None and (snapshot.ledger is not None and snapshot.ledger.ok)
    )
    return render_status(parts, snapshot, reconciliation, settings), healthy


async def stuck_table(settings: Settings, args: argparse.Namespace) -> str:
    from penny.cli import _table, _when

    client = await _temporal(settings)
    rows: list[list[str]] = []
    for name, query in stuck_queries(settings, datetime.now(UTC), customer=args.customer, order=args.order):
        async for execution in client.list_workflows(query, limit=STUCK_LISTED_MAX):
            found = execution.typed_search_attributes
            amount = found.get(search_attributes.AMOUNT)
            rows.append(
                [
                    name,
                    execution.id,
                    found.get(search_attributes.ORDER_ID) or "",
                    found.get(search_attributes.PAYMENT_STATUS) or "",
                    f"{amount if amount is not None else ''} {found.get(search_attributes.CURRENCY) or ''}".strip(),
                    _when(execution.start_time),
                ]
            )
    if not rows:
        return "nothing stuck, in review or disputed"
    return _table(["query", "workflow", "order", "status", "amount", "started"], rows)
