"""Fixtures for payment tests: the real Penny worker on a fresh task queue, against the real
Temporal dev server, the real (embedded) Postgres and the Stripe emulator over HTTP."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
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


def stack_settings(temporal_client: Client, database_url: str, task_queue: str, emulator: Any) -> Settings:
    """Test settings pointing at the session's Temporal, this test's database and `emulator`."""
    return Settings(
        env="test",
        database_url=database_url,
        temporal_address=temporal_client.service_client.config.target_host,
        temporal_namespace=temporal_client.namespace,
        temporal_task_queue=task_queue,
        stripe_api_base=emulator.base_url,
    )


@asynccontextmanager
async def running_stack(
    temporal_client: Client, engine: AsyncEngine, settings: Settings, emulator: Any
) -> AsyncIterator[PaymentStack]:
    """The real worker polling `settings.temporal_task_queue` while the block runs."""
    task_queue = settings.temporal_task_queue
    worker = build_worker(temporal_client, engine, settings, task_queue=task_queue)
    async with worker:
        yield PaymentStack(settings, temporal_client, engine, emulator, task_queue, worker)


@pytest_asyncio.fixture(loop_scope="session")
async def payment_stack(
    temporal_client: Client,
    engine: AsyncEngine,
    database_url: str,
    stripe_emulator: Any,
    task_queue: str,
) -> AsyncIterator[PaymentStack]:
    settings = stack_settings(temporal_client, database_url, task_queue, stripe_emulator)
    async with running_stack(temporal_client, engine, settings, stripe_emulator) as stack:
        yield stack
    stripe_emulator.control.clear_faults()
