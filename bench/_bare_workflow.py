"""The bare-Temporal baseline for bench/payments.py: the same activities as a payment's run,
each doing nothing, and the same first-milestone update.

A payment to CAPTURED runs 4 activities (prepare with its risk screen, transition, create the
PaymentIntent, transition) and then 1 more (book Stripe's fee and the destination charge) while
the next payments start (tests/histories/fee_from_intent_v1_automatic_capture_settled.json).
The baseline runs 4, answers the milestone, then runs 1; the database ones are local
activities in both, as in PaymentWorkflow. (Before patch prepare-screens-v1 the risk check was
an activity of its own; before fee-from-intent-v1 a stripe_charge_balance activity looked the
fee up after the milestone: this baseline ran 5 + 2, then 4 + 2.)

`FootprintWorkflow` is the same no-op workflow with what a payment asks of Temporal besides its
activities: four patch markers in the first workflow task (each with the `TemporalChangeVersion`
search attribute upsert the SDK's core adds), Penny's search attributes upserted twice in that
task and once at the milestone (CAPTURED), and the milestone answered after a bounded wait (a
timer, cancelled). Measured beside both, it splits Penny's distance from the bare workflow into
what Temporal's features cost and what Penny's own work (database, Stripe, workflow code) costs."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow
from temporalio.client import Client, WithStartWorkflowOperation
from temporalio.common import SearchAttributeKey, SearchAttributeUpdate, WorkflowIDConflictPolicy

BARE_ACTIVITY_COUNT = 4  # prepare (risk screen inside), transition, create PaymentIntent, transition
BARE_AFTER_MILESTONE_COUNT = 1  # book fee + destination transfer
# Which of the steps are local activities in PaymentWorkflow (database work).
LOCAL_STEPS = frozenset({0, 1, 3, 4})
# The footprint: patches a payment asks in its first workflow task (fault-paths-v2,
# unclaimed-intent-events-v1, prepare-screens-v1, fee-from-intent-v1), its status upserts (one
# before the first step, one after the second, one at the milestone) and its milestone wait.
FOOTPRINT_PATCHES = ("bench-footprint-1", "bench-footprint-2", "bench-footprint-3", "bench-footprint-4")
FOOTPRINT_STATUS_AFTER_STEP = {-1: "PENDING", 1: "AUTHORIZING", 3: "CAPTURED"}
FOOTPRINT_MILESTONE_WAIT_SECONDS = 30  # as FIRST_MILESTONE_WAIT_SECONDS_DEFAULT in workflows/payment.py
# The keys the payment's upserts carry (workflows/search_attributes.py; registered on the dev server).
_STATUS = SearchAttributeKey.for_keyword("PaymentStatus")
_ORDER_ID = SearchAttributeKey.for_keyword("OrderId")
_AMOUNT = SearchAttributeKey.for_int("Amount")
_CURRENCY = SearchAttributeKey.for_keyword("Currency")
_CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")


@activity.defn(name="bare_noop")
async def bare_noop(step: int) -> int:
    return step


@workflow.defn(name="BareWorkflow")
class BareWorkflow:
    def __init__(self) -> None:
        self._done = False

    @workflow.run
    async def run(self, steps: int) -> int:
        for step in range(steps + BARE_AFTER_MILESTONE_COUNT):
            if step in LOCAL_STEPS:
                await workflow.execute_local_activity("bare_noop", step, start_to_close_timeout=timedelta(seconds=30))
            else:
                await workflow.execute_activity("bare_noop", step, start_to_close_timeout=timedelta(seconds=30))
            if step == steps - 1:
                self._done = True
        return steps

    @workflow.update(name="first_milestone")
    async def first_milestone(self) -> bool:
        await workflow.wait_condition(lambda: self._done)
        return True


@workflow.defn(name="FootprintWorkflow")
class FootprintWorkflow:
    def __init__(self) -> None:
        self._done = False

    def _upsert(self, status: str) -> None:
        info = workflow.info()
        updates: list[SearchAttributeUpdate] = [  # type: ignore[type-arg]
            _STATUS.value_set(status),
            _ORDER_ID.value_set(info.workflow_id),
            _AMOUNT.value_set(9999),
            _CURRENCY.value_set("USD"),
            _CUSTOMER_ID.value_set("cus_bench"),
        ]
        workflow.upsert_search_attributes(updates)

    @workflow.run
    async def run(self, steps: int) -> int:
        for patch in FOOTPRINT_PATCHES:
            workflow.patched(patch)
        self._upsert(FOOTPRINT_STATUS_AFTER_STEP[-1])
        for step in range(steps + BARE_AFTER_MILESTONE_COUNT):
            if step in LOCAL_STEPS:
                await workflow.execute_local_activity("bare_noop", step, start_to_close_timeout=timedelta(seconds=30))
            else:
                await workflow.execute_activity("bare_noop", step, start_to_close_timeout=timedelta(seconds=30))
            if step in FOOTPRINT_STATUS_AFTER_STEP:
                self._upsert(FOOTPRINT_STATUS_AFTER_STEP[step])
            if step == steps - 1:
                self._done = True
        return steps

    @workflow.update(name="first_milestone")
    async def first_milestone(self) -> bool:
        try:
            await workflow.wait_condition(
                lambda: self._done, timeout=timedelta(seconds=FOOTPRINT_MILESTONE_WAIT_SECONDS)
            )
        except TimeoutError:
            pass
        return self._done


async def start_to_milestone(client: Client, workflow_id: str, task_queue: str, *, footprint: bool = False) -> None:
    """Start a bare workflow (or, with `footprint`, the footprint workflow) the way the API
    starts a payment (update-with-start) and wait for its first milestone: the baseline round
    trip of bench/payments.py and bench/api.py."""
    run, milestone = (
        (FootprintWorkflow.run, FootprintWorkflow.first_milestone)
        if footprint
        else (BareWorkflow.run, BareWorkflow.first_milestone)
    )
    operation = WithStartWorkflowOperation(
        run,
        BARE_ACTIVITY_COUNT,
        id=workflow_id,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        task_queue=task_queue,
    )
    reached: object = await client.execute_update_with_start_workflow(milestone, start_workflow_operation=operation)
    assert reached is True, reached


async def _serve(address: str, task_queue: str) -> None:
    """Run the bare worker in its own process (as bench/payments.py runs Penny's worker.py)."""
    import asyncio
    import signal

    from temporalio.worker import Worker

    client = await Client.connect(address)
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        asyncio.get_running_loop().add_signal_handler(signum, stop.set)
    async with Worker(
        client,
        task_queue=task_queue,
        workflows=[BareWorkflow, FootprintWorkflow],
        activities=[bare_noop],
        max_concurrent_activities=200,
        max_concurrent_workflow_tasks=200,
    ):
        await stop.wait()


if __name__ == "__main__":
    import asyncio
    import sys

    asyncio.run(_serve(sys.argv[1], sys.argv[2]))
