"""Fixtures for payment tests: the real Penny worker on a fresh task queue, against the real
Temporal dev server, the real (embedded) Postgres and the Stripe emulator over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client
from temporalio.worker import Worker

from penny.settings import Settings
from worker import build_worker
from workflows.payment_models import PaymentTimings

# Every wait compressed so a payment's whole life fits in a test; the logic is the production logic.
FAST_TIMINGS = PaymentTimings(
    authorization_expiry_seconds=600,
    requires_action_timeout_seconds=600,
    processing_poll_interval_seconds=1,
    processing_polls_max=5,
    settlement_poll_interval_seconds=1,
    settlement_timeout_seconds=600,
    dispute_window_seconds=2,
    stripe_attempts_max=4,
    stripe_initial_interval_seconds=0.1,
    stripe_maximum_interval_seconds=0.5,
    stripe_call_timeout_seconds=5.0,
    uncertain_rounds_max=2,
    transfer_rounds_max=3,
    transfer_retry_initial_seconds=0.5,
    transfer_retry_maximum_seconds=1.0,
)


@dataclass
class PaymentStack:
    settings: Settings
    client: Client
    engine: AsyncEngine
    emulator: Any
    task_queue: str
    worker: Worker


@pytest_asyncio.fixture(loop_scope="session")
async def payment_stack(
    temporal_client: Client,
    engine: AsyncEngine,
    database_url: str,
    stripe_emulator: Any,
    task_queue: str,
) -> AsyncIterator[PaymentStack]:
    settings = Settings(
        env="test",
        database_url=database_url,
        temporal_address=temporal_client.service_client.config.target_host,
        temporal_namespace=temporal_client.namespace,
        temporal_task_queue=task_queue,
        stripe_api_base=stripe_emulator.base_url,
    )
    worker = build_worker(temporal_client, engine, settings, task_queue=task_queue)
    async with worker:
        yield PaymentStack(settings, temporal_client, engine, stripe_emulator, task_queue, worker)
    stripe_emulator.control.clear_faults()
