"""`penny reconcile ...`: run a reconciliation for a window, list runs, print a run's report.

    penny reconcile --from 2026-11-21 --to 2026-11-22   # start a run, wait, print its report
    penny reconcile --from 1763683200 --to 1763769600 --no-wait
    penny reconcile runs                                # the newest runs
    penny reconcile report RUN [--csv | --html]         # a run's report (terminal, CSV or HTML)

Times are unix seconds, a date (midnight UTC) or an ISO 8601 time (UTC unless it names a zone).
A run needs the worker (`penny worker`, or `penny dev`) polling the configured task queue.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncEngine

from penny.settings import Settings, get_settings

T = TypeVar("T")
WAIT_TIMEOUT_SECONDS = 3600.0


def parse_moment(text: str) -> int:
    """Unix seconds from `1763683200`, `2026-11-21` (midnight UTC) or `2026-11-21T10:00:00+01:00`."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            return int(datetime(day.year, day.month, day.day, tzinfo=UTC).timestamp())
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as error:
        raise argparse.ArgumentTypeError(f"not a time: {text!r} (unix seconds, YYYY-MM-DD or ISO 8601)") from error
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def add_reconcile_commands(commands: Any) -> None:
    reconcile = commands.add_parser(
        "reconcile", help="reconcile a window against Stripe, or show reconciliation runs and reports"
    )
    reconcile.add_argument(
        "--from", dest="window_from", metavar="TIME", type=parse_moment, help="window start (included)"
    )
    reconcile.add_argument("--to", dest="window_to", metavar="TIME", type=parse_moment, help="window end (excluded)")
    reconcile.add_argument("--no-wait", action="store_true", help="start the run and return without its report")
    reconcile.add_argument("--operator", default=None, help="who asks; default: your login name")
    reconcile.set_defaults(handler=command_reconcile)
    sub = reconcile.add_subparsers(dest="reconcile_command", required=False)
    runs = sub.add_parser("runs", help="the newest reconciliation runs")
    runs.add_argument("--limit", type=int, default=20, help="how many (at most 100)")
    runs.set_defaults(handler=command_reconcile_runs)
    report = sub.add_parser("report", help="a run's report: counts per class and every mismatch")
    report.add_argument("run_id", metavar="RUN", help="the run id (recon_...)")
    output = report.add_mutually_exclusive_group()
    output.add_argument("--csv", action="store_true", help="the items as CSV")
    output.add_argument("--html", action="store_true", help="the HTML report (with its chart)")
    report.set_defaults(handler=command_reconcile_report)


async def _with_engine(settings: Settings, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    from penny.db import create_engine

    engine = create_engine(settings.effective_database_url, pool_size=1)
    try:
        return await work(engine)
    finally:
        await engine.dispose()


def command_reconcile(args: argparse.Namespace, settings: Settings | None = None) -> int:
    settings = settings or get_settings()
    if args.window_from is None or args.window_to is None:
        print("penny: reconcile needs --from and --to (or `penny reconcile runs|report`)", file=sys.stderr)
        return 2
    if args.window_to <= args.window_from:
        print("penny: --to must be after --from", file=sys.stderr)
        return 2
    operator = " ".join((args.operator or getpass.getuser()).split())[:100] or "cli"
    return asyncio.run(_reconcile(settings, args.window_from, args.window_to, f"cli:{operator}", not args.no_wait))


async def _reconcile(settings: Settings, window_from: int, window_to: int, requested_by: str, wait: bool) -> int:
    from temporalio.client import Client, WorkflowFailureError

    from penny import reconciliation_reports as reports
    from penny.reconciliation_schedule import new_run_id, start_reconciliation

    try:
        client = await Client.connect(settings.effective_temporal_address, namespace=settings.temporal_namespace)
    except Exception as error:  # the message names what failed; no stack trace for an operator
        print(f"penny: Temporal at {settings.effective_temporal_address}: {error}", file=sys.stderr)
        return 1
    run_id = new_run_id()
    handle = await start_reconciliation(
        client,
        settings.temporal_task_queue,
        run_id=run_id,
        window_start_unix=window_from,
        window_end_unix=window_to,
        trigger="cli",
        requested_by=requested_by,
    )

    async def record(engine: AsyncEngine) -> None:
        await reports.record_requested_run(
            engine,
            run_id=run_id,
            window_start_unix=window_from,
            window_end_unix=window_to,
            trigger="cli",
            requested_by=requested_by,
            workflow_id=handle.id,
        )

    await _with_engine(settings, record)
    print(f"started reconciliation run {run_id} (workflow {handle.id})")
    if not wait:
        return 0
    try:
        await asyncio.wait_for(handle.result(), timeout=WAIT_TIMEOUT_SECONDS)
    except (WorkflowFailureError, TimeoutError) as error:
        # The run is in the Temporal UI (its workflow id above) with every attempt and error.
        print(f"penny: reconciliation run {run_id} did not finish: {error}", file=sys.stderr)
        return 1
    print(await _with_engine(settings, lambda engine: _report_text(engine, run_id, "text")), end="")
    return 0


async def _report_text(engine: AsyncEngine, run_id: str, form: str) -> str:
    from penny import reconciliation_reports as reports

    run = await reports.get_run(engine, run_id)
    if run is None:
        raise LookupError(run_id)
    items = await reports.run_items(engine, run_id)
    if form == "csv":
        return reports.render_csv(items)
    if form == "html":
        return reports.render_html(run, items, await reports.list_runs(engine, reports.CHART_RUNS_MAX)) + "\n"
    return reports.render_text(run, items)


def command_reconcile_report(args: argparse.Namespace, settings: Settings | None = None) -> int:
    settings = settings or get_settings()
    form = "csv" if args.csv else "html" if args.html else "text"
    try:
        output = asyncio.run(_with_engine(settings, lambda engine: _report_text(engine, args.run_id, form)))
    except LookupError:
        print(f"penny: no reconciliation run {args.run_id} (see `penny reconcile runs`)", file=sys.stderr)
        return 1
    print(output, end="")
    return 0


def command_reconcile_runs(args: argparse.Namespace, settings: Settings | None = None) -> int:
    from penny import reconciliation_reports as reports

    settings = settings or get_settings()
    runs = asyncio.run(_with_engine(settings, lambda engine: reports.list_runs(engine, args.limit)))
    print(
        f"{'RUN':<31} {'WINDOW START':<20} {'WINDOW END':<20} {'TRIGGER':<8} {'STATUS':<9} "
        f"{'MATCHED':>7} {'MISMATCHES':>10}"
    )
    for run in runs:
        print(
            f"{run.id:<31} {_when(run.window_start):<20} {_when(run.window_end):<20} {run.trigger:<8} "
            f"{run.status:<9} {run.counts.get('matched', 0):>7} {run.mismatches:>10}"
        )
    return 0


def _when(unix: int) -> str:
    return datetime.fromtimestamp(unix, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
