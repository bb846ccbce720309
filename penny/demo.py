"""`penny demo`: a short scenario against the running stack, with a readable summary.

It grows as features land. Today it shows that every part of the stack answers and that a
workflow runs end to end through Temporal, the worker and Postgres.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
from temporalio.client import Client

from penny.settings import Settings
from workflows.health import HealthCheckInput, HealthCheckWorkflow
from workflows.search_attributes import SEARCH_ATTRIBUTE_TYPES


def api_url(settings: Settings) -> str:
    return f"http://{settings.host}:{settings.api_port}"


def api_is_up(settings: Settings) -> bool:
    try:
        return httpx.get(f"{api_url(settings)}/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


async def run_demo(settings: Settings) -> None:
    print("\n=== Penny demo ===")
    async with httpx.AsyncClient(base_url=api_url(settings), timeout=10.0) as http:
        health = (await http.get("/healthz")).json()
    for name, state in health["dependencies"].items():
        mark = "✓" if state["ok"] else "✗"
        print(f"  {mark} {name:<9} {state['detail']}")

    client = await Client.connect(settings.effective_temporal_address, namespace=settings.temporal_namespace)
    result = await client.execute_workflow(
        HealthCheckWorkflow.run,
        HealthCheckInput(source="penny demo"),
        id=f"demo-health-{uuid.uuid4()}",
        task_queue=settings.temporal_task_queue,
    )
    print(
        f"  ✓ workflow  HealthCheckWorkflow completed: heartbeat #{result.heartbeat_id} "
        f"written to database {result.database!r}"
    )

    from temporalio.api.operatorservice.v1 import ListSearchAttributesRequest

    listed = await client.operator_service.list_search_attributes(
        ListSearchAttributesRequest(namespace=settings.temporal_namespace)
    )
    registered = sorted(name for name in SEARCH_ATTRIBUTE_TYPES if name in listed.custom_attributes)
    print(f"  ✓ search attributes registered: {', '.join(registered)}")
    print("=== demo complete ===\n")


def run_demo_sync(settings: Settings) -> None:
    asyncio.run(run_demo(settings))
