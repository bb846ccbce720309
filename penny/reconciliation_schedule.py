"""The daily reconciliation Schedule, and starting a run on demand (client side, not workflow code).

The worker calls `ensure_reconciliation_schedule` at start: it creates the Schedule, or updates
it to the current settings when it exists (so a changed time or timezone applies at the next
deploy), idempotently. One Schedule per task queue (`reconciliation-daily-<task queue>`).
"""

from __future__ import annotations

import secrets
import string
from datetime import timedelta

from temporalio.client import (
    Client,
    Schedule,
    ScheduleActionStartWorkflow,
    ScheduleAlreadyRunningError,
    ScheduleCalendarSpec,
    ScheduleOverlapPolicy,
    SchedulePolicy,
    ScheduleRange,
    ScheduleSpec,
    ScheduleState,
    ScheduleUpdate,
    ScheduleUpdateInput,
    WorkflowHandle,
)
from temporalio.common import WorkflowIDReusePolicy

from penny.settings import Settings
from workflows.reconciliation import ReconciliationWorkflow
from workflows.reconciliation_models import (
    ReconciliationInput,
    ReconciliationResult,
    reconciliation_workflow_id,
)

SCHEDULE_ID_PREFIX = "reconciliation-daily-"
RUN_ID_LETTERS = 24
OVERLAP_POLICIES = {
    "skip": ScheduleOverlapPolicy.SKIP,
    "buffer_one": ScheduleOverlapPolicy.BUFFER_ONE,
    "buffer_all": ScheduleOverlapPolicy.BUFFER_ALL,
    "cancel_other": ScheduleOverlapPolicy.CANCEL_OTHER,
    "allow_all": ScheduleOverlapPolicy.ALLOW_ALL,
}


def schedule_id(task_queue: str) -> str:
    return f"{SCHEDULE_ID_PREFIX}{task_queue}"


def new_run_id() -> str:
    return "recon_" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(RUN_ID_LETTERS))


def reconciliation_schedule(settings: Settings, task_queue: str) -> Schedule:
    hour, minute = (int(part) for part in settings.reconciliation_time.split(":"))
    return Schedule(
        action=ScheduleActionStartWorkflow(
            ReconciliationWorkflow.run,
            ReconciliationInput(trigger="schedule", timezone=settings.reconciliation_timezone),
            id=f"reconciliation-scheduled-{task_queue}",
            task_queue=task_queue,
        ),
        spec=ScheduleSpec(
            calendars=[
                ScheduleCalendarSpec(
                    second=[ScheduleRange(0)], minute=[ScheduleRange(minute)], hour=[ScheduleRange(hour)]
                )
            ],
            time_zone_name=settings.reconciliation_timezone,
        ),
        policy=SchedulePolicy(
            overlap=OVERLAP_POLICIES[settings.reconciliation_overlap_policy],
            catchup_window=timedelta(seconds=settings.reconciliation_catchup_window_seconds),
        ),
        state=ScheduleState(note="Penny daily reconciliation (README 'Reconciliation')"),
    )


async def ensure_reconciliation_schedule(
    client: Client, settings: Settings, task_queue: str | None = None
) -> str | None:
    """Create the daily Schedule, or bring an existing one to the current settings. Returns its id
    (None when PENNY_RECONCILIATION_SCHEDULE_ENABLED is false)."""
    if not settings.reconciliation_schedule_enabled:
        return None
    queue = task_queue or settings.temporal_task_queue
    schedule = reconciliation_schedule(settings, queue)
    identifier = schedule_id(queue)
    try:
        await client.create_schedule(identifier, schedule)
    except ScheduleAlreadyRunningError:

        def keep_state(update: ScheduleUpdateInput) -> ScheduleUpdate:
            # An operator's pause stays: only the action, spec and policy follow the settings.
            schedule.state = update.description.schedule.state
            return ScheduleUpdate(schedule=schedule)

        await client.get_schedule_handle(identifier).update(keep_state)
    return identifier


async def start_reconciliation(
    client: Client,
    task_queue: str,
    *,
    run_id: str,
    window_start_unix: int,
    window_end_unix: int,
    trigger: str,
    requested_by: str,
) -> WorkflowHandle[ReconciliationWorkflow, ReconciliationResult]:
    """Start an on-demand run (API, CLI). The workflow id names the run, so one run starts once."""
    return await client.start_workflow(
        ReconciliationWorkflow.run,
        ReconciliationInput(
            run_id=run_id,
            window_start_unix=window_start_unix,
            window_end_unix=window_end_unix,
            trigger=trigger,
            requested_by=requested_by,
        ),
        id=reconciliation_workflow_id(run_id),
        task_queue=task_queue,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
    )
