"""HealthCheckWorkflow: one activity that writes to Postgres.

It proves the whole worker path (Temporal -> worker -> activity -> Postgres) and is what
`penny demo` runs first. Deterministic: it only schedules an activity by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from temporalio import workflow
from temporalio.common import RetryPolicy

HEARTBEAT_ACTIVITY = "record_heartbeat"


@dataclass
class HealthCheckInput:
    source: str


@dataclass
class HealthCheckResult:
    source: str
    heartbeat_id: int
    database: str


@workflow.defn(name="HealthCheckWorkflow")
class HealthCheckWorkflow:
    @workflow.run
    async def run(self, request: HealthCheckInput) -> HealthCheckResult:
        return await workflow.execute_activity(
            HEARTBEAT_ACTIVITY,
            request,
            result_type=HealthCheckResult,
            start_to_close_timeout=timedelta(seconds=10),
            retry_policy=RetryPolicy(maximum_attempts=3),
        )
