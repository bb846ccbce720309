"""The soak's last check: a reconciliation run over the soak's window must agree with the soak.

After the invariants, `penny chaos` starts a `ReconciliationWorkflow` (the same workflow the
daily Schedule runs) on the stack's worker, over a window that holds every record of the run on
both sides: from an hour before the run started (Penny's clock) to an hour after the later of
Penny's clock and the emulator's (the soak moves the emulator's clock by days to settle
payments, so Stripe's records carry later times than Penny's).

What the chaos report predicts: every order of the run either agrees with Stripe or its payment
is in NEEDS_REVIEW (Penny itself says "a person must look": a reconciliation item there is
expected, and reported as explained). Any other item is a violation: reconciliation found a
difference the soak's own money checks did not, or the comparison is wrong.
"""

from __future__ import annotations

import asyncio
import random
import string
import time
from collections.abc import Sequence

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from penny.chaos_checks import InvariantResult, Violation
from penny.logs import scrub_card_numbers
from penny.reconciliation_reports import run_items
from penny.reconciliation_schedule import start_reconciliation
from stripe_emulator.control import AsyncEmulatorControl

RECONCILIATION_AGREES = "reconciliation_agrees"
RECONCILIATION_TIMEOUT_SECONDS = 600.0
WINDOW_MARGIN_SECONDS = 3600
EXAMPLES_MAX = 20
RUN_ID_LETTERS = 24


def _run_id(seed: int) -> str:
    rng = random.Random(f"chaos-reconcile-{seed}-{time.time_ns()}")
    return "recon_" + "".join(rng.choice(string.ascii_lowercase) for _ in range(RUN_ID_LETTERS))


async def _statuses(engine: AsyncEngine, order_ids: Sequence[str]) -> dict[str, str]:
    async with engine.connect() as connection:
        rows = await connection.execute(
            text("SELECT order_id, status FROM payments WHERE order_id = ANY(:ids)"), {"ids": list(order_ids)}
        )
        return {row.order_id: row.status for row in rows}


async def check_reconciliation_agrees(
    *,
    engine: AsyncEngine,
    temporal: Client,
    task_queue: str,
    emulator_url: str,
    started_unix: int,
    order_ids: Sequence[str],
    seed: int,
) -> InvariantResult:
    async with AsyncEmulatorControl(emulator_url) as control:
        emulator_now = int((await control.clock())["now"])
    window_start = started_unix - WINDOW_MARGIN_SECONDS
    window_end = max(int(time.time()), emulator_now) + WINDOW_MARGIN_SECONDS
    run_id = _run_id(seed)
    handle = await start_reconciliation(
        temporal,
        task_queue,
        run_id=run_id,
        window_start_unix=window_start,
        window_end_unix=window_end,
        trigger="cli",
        requested_by="penny chaos",
    )
    result = await asyncio.wait_for(handle.result(), RECONCILIATION_TIMEOUT_SECONDS)
    items = await run_items(engine, run_id)
    statuses = await _statuses(engine, order_ids)
    ours = set(order_ids)
    violations: list[Violation] = []
    violation_count = explained = 0
    explained_examples: list[Violation] = []
    for item in items:
        detail = scrub_card_numbers(f"{item.item_class}: {item.reason} (stripe {item.stripe_id or '-'})")
        violation = Violation(RECONCILIATION_AGREES, item.order_id, detail)
        if item.order_id is not None and statuses.get(item.order_id) == "NEEDS_REVIEW":
            explained += 1
            if len(explained_examples) < EXAMPLES_MAX:
                explained_examples.append(violation)
        else:
            violation_count += 1
            if len(violations) < EXAMPLES_MAX:
                violations.append(violation)
    notes = [f"run {run_id}: " + ", ".join(f"{name} {count}" for name, count in sorted(result.counts.items()) if count)]
    strangers = sorted({item.order_id for item in items if item.order_id and item.order_id not in ours})
    if strangers:
        notes.append(f"items of orders outside the run: {', '.join(strangers[:5])}")
    return InvariantResult(
        name=RECONCILIATION_AGREES,
        checked=sum(result.counts.values()),
        violations=violations,
        violation_count=violation_count,
        explained=explained,
        explained_examples=explained_examples,
        notes=notes,
    )
