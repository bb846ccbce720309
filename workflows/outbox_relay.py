"""OutboxRelayWorkflow: publishes committed outbox events to subscribers, forever, one per task queue.

The same shape as WebhookRelayWorkflow (workflows/webhook_relay.py), for the same reasons: one
relay per deployment (its id is fixed: `outbox-relay-<task queue>`), however many workers poll;
it survives worker restarts and deploys; its rounds and failures are visible in the Temporal UI.
The worker starts it at start-up (USE_EXISTING: attaching when it already runs).

Each round is one bounded activity (`relay_outbox`, activities/outbox.py): fan out unpublished
outbox rows into deliveries, then deliver what is due, at most PENNY_OUTBOX_RELAY_BATCH_SIZE
attempts and ROUND_CLAIMING_SECONDS_MAX of claiming, heartbeating as it goes. The workflow
sleeps between rounds (PENNY_OUTBOX_RELAY_INTERVAL_SECONDS, or at once after a round that hit
a limit) and continues as new after `rounds_per_run` rounds so its history stays short. A
`wake` signal starts the next round now.

The relay never touches a payment workflow: a subscriber that is slow, down or wrong delays
only its own deliveries, never a payment. Correctness does not depend on there being one
relay: deliveries are claimed under a lease, so two relays (two task queues on one database, or
a round retried while the lost one's requests are still out) only ever repeat a delivery.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.client import Client, WorkflowHandle
from temporalio.common import RetryPolicy, WorkflowIDConflictPolicy

with workflow.unsafe.imports_passed_through():
    from activities.outbox_types import (
        OUTBOX_RELAY_ACTIVITY_NAME,
        OUTBOX_RELAY_WORKFLOW_NAME,
        OutboxRelayInput,
        OutboxRelayRoundInput,
        OutboxRelayRoundResult,
        relay_workflow_id,
    )

SIGNAL_WAKE = "wake"
# Claiming stops after 30 s (ROUND_CLAIMING_SECONDS_MAX) and a request lasts at most connect +
# read timeout (90 s with the largest settings): a round always ends well inside this.
OUTBOX_RELAY_ACTIVITY_TIMEOUT = timedelta(minutes=5)
# The round heartbeats at least every ROUND_POLL_SECONDS: a round lost with its worker is retried
# after this, and its leased deliveries come back when their lease (120 s) ends.
OUTBOX_RELAY_HEARTBEAT_TIMEOUT = timedelta(seconds=30)
# The activity only fails when the database is unreachable: retry until it is back, bounded interval.
OUTBOX_RELAY_RETRY = RetryPolicy(initial_interval=timedelta(seconds=1), maximum_interval=timedelta(seconds=60))


@workflow.defn(name=OUTBOX_RELAY_WORKFLOW_NAME)
class OutboxRelayWorkflow:
    def __init__(self) -> None:
        self._woken = False
        self._rounds = 0
        self._published = 0
        self._delivered = 0

    @workflow.signal(name=SIGNAL_WAKE)
    def wake(self) -> None:
        self._woken = True

    @workflow.query(name="progress")
    def progress(self) -> dict[str, int]:
        return {"rounds": self._rounds, "published": self._published, "delivered": self._delivered}

    @workflow.run
    async def run(self, request: OutboxRelayInput) -> None:
        for round_number in range(max(1, request.rounds_per_run)):
            self._woken = False
            result: OutboxRelayRoundResult = await workflow.execute_activity(
                OUTBOX_RELAY_ACTIVITY_NAME,
                OutboxRelayRoundInput(round_number=round_number),
                result_type=OutboxRelayRoundResult,
                start_to_close_timeout=OUTBOX_RELAY_ACTIVITY_TIMEOUT,
                heartbeat_timeout=OUTBOX_RELAY_HEARTBEAT_TIMEOUT,
                retry_policy=OUTBOX_RELAY_RETRY,
            )
            self._rounds += 1
            self._published += result.published
            self._delivered += result.delivered
            if result.sleep_seconds > 0 and not self._woken:
                try:
                    await workflow.wait_condition(lambda: self._woken, timeout=timedelta(seconds=result.sleep_seconds))
                except TimeoutError:
                    pass
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(request)


async def start_outbox_relay(client: Client, task_queue: str) -> WorkflowHandle[OutboxRelayWorkflow, None]:
    """Start the task queue's outbox relay, or attach to the one already running."""
    return await client.start_workflow(
        OutboxRelayWorkflow.run,
        OutboxRelayInput(),
        id=relay_workflow_id(task_queue),
        task_queue=task_queue,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
    )
