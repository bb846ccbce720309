"""WebhookRelayWorkflow: re-delivers stored-but-undelivered Stripe events, forever, one per task queue.

Why a workflow (and not a loop in the worker process): exactly one relay runs per deployment
(its id is fixed: `webhook-relay-<task queue>`), however many workers poll; it survives worker
restarts and deploys; its rounds, failures and retries are visible in the Temporal UI; and it
only runs while Temporal is up, which is exactly when delivery can succeed. The worker starts
it at start-up (USE_EXISTING: attaching when it already runs). Each round is one bounded
activity (`relay_webhook_events`: at most PENNY_WEBHOOK_RELAY_BATCH_SIZE events, each with its
own backoff and attempt limit); the workflow sleeps between rounds and continues as new after
`rounds_per_run` rounds so its history stays short. A `wake` signal starts the next round now.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.common import RetryPolicy, WorkflowIDConflictPolicy

with workflow.unsafe.imports_passed_through():
    from activities.webhook_types import (
        RELAY_ACTIVITY_NAME,
        RELAY_WORKFLOW_NAME,
        RelayBatchInput,
        RelayBatchResult,
        RelayInput,
        relay_workflow_id,
    )

SIGNAL_WAKE = "wake"
RELAY_ACTIVITY_TIMEOUT = timedelta(minutes=10)
# The activity heartbeats after every event: a round lost with its worker (SIGKILL, a deploy) is
# retried on another worker after this, not after RELAY_ACTIVITY_TIMEOUT (found by `penny chaos`:
# dispute events waited ten minutes behind a killed worker's round).
RELAY_HEARTBEAT_TIMEOUT = timedelta(seconds=30)
# The activity only fails when the database is unreachable: retry until it is back, bounded interval.
RELAY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=60))


@workflow.defn(name=RELAY_WORKFLOW_NAME)
class WebhookRelayWorkflow:
    def __init__(self) -> None:
        self._woken = False
        self._rounds = 0
        self._delivered = 0

    @workflow.signal(name=SIGNAL_WAKE)
    def wake(self) -> None:
        self._woken = True

    @workflow.query(name="progress")
    def progress(self) -> dict[str, int]:
        return {"rounds": self._rounds, "delivered": self._delivered}

    @workflow.run
    async def run(self, request: RelayInput) -> None:
        for round_number in range(max(1, request.rounds_per_run)):
            self._woken = False
            result: RelayBatchResult = await workflow.execute_activity(
                RELAY_ACTIVITY_NAME,
                RelayBatchInput(round_number=round_number),
                result_type=RelayBatchResult,
                start_to_close_timeout=RELAY_ACTIVITY_TIMEOUT,
                heartbeat_timeout=RELAY_HEARTBEAT_TIMEOUT,
                retry_policy=RELAY_RETRY,
            )
            self._rounds += 1
            self._delivered += result.delivered
            if result.sleep_seconds > 0 and not self._woken:
                try:
                    await workflow.wait_condition(lambda: self._woken, timeout=timedelta(seconds=result.sleep_seconds))
                except TimeoutError:
                    pass
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(request)


async def start_webhook_relay(client: Client, task_queue: str) -> WorkflowHandle[WebhookRelayWorkflow, None]:
    """Start the task queue's relay, or attach to the one already running."""
    return await client.start_workflow(
        WebhookRelayWorkflow.run,
        RelayInput(),
        id=relay_workflow_id(task_queue),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
