"""The bare-Temporal baseline for bench/payments.py: the same number of activities as a
payment's path to CAPTURED, each doing nothing, and the same first-milestone update."""

from __future__ import annotations

from datetime import timedelta

from temporalio import activity, workflow

BARE_ACTIVITY_COUNT = 5  # prepare, risk, transition, create PaymentIntent, transition


@activity.defn(name="bare_noop")
async def bare_noop(step: int) -> int:
    return step


@workflow.defn(name="BareWorkflow")
class BareWorkflow:
    def __init__(self) -> None:
        self._done = False

    @workflow.run
    async def run(self, steps: int) -> int:
        for step in range(steps):
            await workflow.execute_activity("bare_noop", step, start_to_close_timeout=timedelta(seconds=30))
        self._done = True
        return steps

    @workflow.update(name="first_milestone")
    async def first_milestone(self) -> bool:
        await workflow.wait_condition(lambda: self._done)
        return True
