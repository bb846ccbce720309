"""The health-check activity: a real write and read against Postgres."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio import activity

from workflows.health import HEARTBEAT_ACTIVITY, HealthCheckInput, HealthCheckResult


class HealthActivities:
    def __init__(self, engine: AsyncEngine) -> None:
        self._engine = engine

    @activity.defn(name=HEARTBEAT_ACTIVITY)
    async def record_heartbeat(self, request: HealthCheckInput) -> HealthCheckResult:
        async with self._engine.begin() as connection:
            heartbeat_id = (
                await connection.execute(
                    text("INSERT INTO service_heartbeats (source) VALUES (:source) RETURNING id"),
                    {"source": request.source[:200]},
                )
            ).scalar_one()
            database = (await connection.execute(text("SELECT current_database()"))).scalar_one()
        return HealthCheckResult(source=request.source, heartbeat_id=int(heartbeat_id), database=str(database))
