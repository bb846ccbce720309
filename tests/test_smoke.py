"""Each fixture really works: a SQL round trip, and a tiny workflow with one activity."""

from __future__ import annotations

import uuid

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity, workflow
from temporalio.client import Client
from temporalio.worker import Worker

from activities.health import HealthActivities
from penny.settings import Settings
from workflows.health import HealthCheckInput, HealthCheckWorkflow
from workflows.search_attributes import SEARCH_ATTRIBUTE_TYPES


async def test_postgres_round_trip(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        await connection.execute(text("CREATE TEMP TABLE round_trip (value bigint)"))
        await connection.execute(text("INSERT INTO round_trip VALUES (9223372036854775807)"))
        stored = (await connection.execute(text("SELECT value FROM round_trip"))).scalar_one()
    assert stored == 2**63 - 1


async def test_migrations_ran(engine: AsyncEngine) -> None:
    async with engine.connect() as connection:
        version = (await connection.execute(text("SELECT version_num FROM alembic_version"))).scalar_one()
    assert version


@activity.defn(name="shout")
async def shout(message: str) -> str:
    return message.upper()


@workflow.defn(name="ShoutWorkflow")
class ShoutWorkflow:
    @workflow.run
    async def run(self, message: str) -> str:
        from datetime import timedelta

        return await workflow.execute_activity("shout", message, start_to_close_timeout=timedelta(seconds=5))


async def test_tiny_workflow_with_one_activity(temporal_client: Client, task_queue: str) -> None:
    async with Worker(temporal_client, task_queue=task_queue, workflows=[ShoutWorkflow], activities=[shout]):
        result = await temporal_client.execute_workflow(
            ShoutWorkflow.run, "penny", id=f"shout-{uuid.uuid4()}", task_queue=task_queue
        )
    assert result == "PENNY"


async def test_penny_worker_runs_health_check_against_postgres(
    temporal_client: Client, engine: AsyncEngine, task_queue: str
) -> None:
    """The real worker wiring (worker.build_worker) completes a workflow that writes to Postgres."""
    from worker import build_worker  # not at module level: this module defines a sandboxed workflow

    async with build_worker(temporal_client, engine, Settings(), task_queue=task_queue):
        result = await temporal_client.execute_workflow(
            HealthCheckWorkflow.run,
            HealthCheckInput(source="smoke test"),
            id=f"health-{uuid.uuid4()}",
            task_queue=task_queue,
        )
    async with engine.connect() as connection:
        source = (
            await connection.execute(
                text("SELECT source FROM service_heartbeats WHERE id = :id"), {"id": result.heartbeat_id}
            )
        ).scalar_one()
    assert source == "smoke test"
    assert result.database == engine.url.database
    _ = HealthActivities  # the activity class used by build_worker


async def test_search_attributes_registered(temporal_client: Client) -> None:
    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

    listed = await temporal_client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=temporal_client.namespace)
    )
    for name in SEARCH_ATTRIBUTE_TYPES:
        assert name in listed.custom_attributes
