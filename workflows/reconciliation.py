"""ReconciliationWorkflow: Stripe's records for a window against Penny's ledger and payments.

Steps, each an activity (activities/reconciliation.py):
1. `reconciliation_start_run`: the run row (idempotent); a scheduled run's window is the day(s)
   before the time it was scheduled for, in the configured timezone.
2. `reconciliation_fetch_pages` per Stripe object type: at most `pages_per_activity` pages
   per call, staged in Postgres with COPY; the activity heartbeats its cursor after each
   page, so a retry resumes where the last attempt stopped. It returns a count and the next
   cursor, never the objects.
3. `reconciliation_compare`: one set-based SQL pass classifying every mismatch (counts only).
4. `reconciliation_repair`: signals payment workflows for the one unambiguous case.
5. `reconciliation_finish`: review items, metrics and the run's counts.

A long window stays inside Temporal's history limits: the workflow continues as new (carrying
where the fetch stands) after `fetch_calls_per_run` fetch calls or when Temporal suggests it.
Deterministic: the run id comes from `workflow.random()`, the time from `workflow.now()` and the
Schedule's own search attribute.
"""

from __future__ import annotations

import string
from datetime import datetime, timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy, SearchAttributeKey

with workflow.unsafe.imports_passed_through():
    from workflows.reconciliation_models import (
        OBJECT_TYPES,
        RECONCILIATION_WORKFLOW_TYPE,
        CompareResult,
        FetchPagesInput,
        FetchPagesResult,
        FetchProgress,
        ReconciliationInput,
        ReconciliationResult,
        RepairResult,
        RunInput,
        StartRunInput,
        StartRunResult,
    )

RUN_ID_LETTERS = 24
# Upper bounds of ReconciliationInput.pages_per_activity and .fetch_calls_per_run (each fetch
# call adds about 6 history events; 200 calls stay far below Temporal's limits).
FETCH_PAGES_PER_ACTIVITY_MAX = 100
FETCH_CALLS_PER_RUN_MAX = 200
FETCH_TIMEOUT = timedelta(minutes=10)
FETCH_HEARTBEAT_TIMEOUT = timedelta(seconds=60)
STEP_TIMEOUT = timedelta(minutes=10)
# Stripe or Postgres unavailable: retried with backoff, bounded (a run that cannot finish fails
# visibly and the next scheduled run, or an operator's re-run, covers the window again).
RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=60), maximum_attempts=20)
SCHEDULED_START_TIME = SearchAttributeKey.for_datetime("TemporalScheduledStartTime")


def _run_id() -> str:
    randomness = workflow.random()
    return "recon_" + "".join(randomness.choice(string.ascii_lowercase) for _ in range(RUN_ID_LETTERS))


def _scheduled_time() -> datetime:
    scheduled = workflow.info().typed_search_attributes.get(SCHEDULED_START_TIME)
    return scheduled if scheduled is not None else workflow.now()


@workflow.defn(name=RECONCILIATION_WORKFLOW_TYPE)
class ReconciliationWorkflow:
    def __init__(self) -> None:
        self._phase = "starting"

    @workflow.query(name="phase")
    def phase(self) -> str:
        return self._phase

    @workflow.run
    async def run(self, request: ReconciliationInput) -> ReconciliationResult:
        if request.progress is None:
            request = await self._start(request)
        assert request.run_id is not None and request.window_start_unix is not None
        assert request.window_end_unix is not None and request.progress is not None
        progress = request.progress
        calls = 0
        while progress.next_type_index < len(OBJECT_TYPES):
            object_type = OBJECT_TYPES[progress.next_type_index]
            self._phase = f"fetching {object_type}"
            result: FetchPagesResult = await workflow.execute_activity(
                "reconciliation_fetch_pages",
                FetchPagesInput(
                    run_id=request.run_id,
                    object_type=object_type,
                    window_start_unix=request.window_start_unix,
                    window_end_unix=request.window_end_unix,
                    starting_after=progress.cursor,
                    pages_max=min(max(1, request.pages_per_activity), FETCH_PAGES_PER_ACTIVITY_MAX),
                ),
                result_type=FetchPagesResult,
                start_to_close_timeout=FETCH_TIMEOUT,
                heartbeat_timeout=FETCH_HEARTBEAT_TIMEOUT,
                retry_policy=RETRY,
            )
            calls += 1
            progress.fetched[object_type] = progress.fetched.get(object_type, 0) + result.fetched
            progress.cursor = result.next_cursor
            if result.next_cursor is None:
                progress.next_type_index += 1
            calls_max = min(max(1, request.fetch_calls_per_run), FETCH_CALLS_PER_RUN_MAX)
            if calls >= calls_max or workflow.info().is_continue_as_new_suggested():
                workflow.continue_as_new(request)
        run = RunInput(request.run_id)
        self._phase = "comparing"
        compared: CompareResult = await workflow.execute_activity(
            "reconciliation_compare",
            run,
            result_type=CompareResult,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=RETRY,
        )
        self._phase = "repairing"
        repaired: RepairResult = await workflow.execute_activity(
            "reconciliation_repair",
            run,
            result_type=RepairResult,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=RETRY,
        )
        self._phase = "reporting"
        await workflow.execute_activity(
            "reconciliation_finish",
            run,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=RETRY,
        )
        self._phase = "completed"
        return ReconciliationResult(run_id=request.run_id, counts=compared.counts, repaired=repaired.signalled)

    async def _start(self, request: ReconciliationInput) -> ReconciliationInput:
        run_id = request.run_id or _run_id()
        started: StartRunResult = await workflow.execute_activity(
            "reconciliation_start_run",
            StartRunInput(
                run_id=run_id,
                trigger=request.trigger,
                requested_by=request.requested_by,
                workflow_id=workflow.info().workflow_id,
                window_start_unix=request.window_start_unix,
                window_end_unix=request.window_end_unix,
                scheduled_unix=int(_scheduled_time().timestamp()),
                timezone=request.timezone,
                window_days=request.window_days,
            ),
            result_type=StartRunResult,
            start_to_close_timeout=STEP_TIMEOUT,
            retry_policy=RETRY,
        )
        request.run_id = run_id
        request.window_start_unix = started.window_start_unix
        request.window_end_unix = started.window_end_unix
        request.progress = FetchProgress()
        return request
