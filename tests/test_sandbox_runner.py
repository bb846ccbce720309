"""penny.sandbox_runner: the SDK's sandbox with its code strings compiled once, and nothing else changed.

Workflows run on the real Temporal dev server through the runner the worker uses: they
complete, replay, and the sandbox still refuses what a workflow must not do.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest
from temporalio import activity, workflow
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHandle
from temporalio.worker import Replayer, Worker
from temporalio.worker.workflow_sandbox import SandboxedWorkflowRunner, SandboxRestrictions

from penny import sandbox_runner
from penny.sandbox_runner import CompiledSandboxedWorkflowRunner, compiled_code_supported, compiled_sandbox_code

WAIT_FOR_TASK_FAILURE_SECONDS = 15.0


@activity.defn(name="sandbox_echo")
async def sandbox_echo(message: str) -> str:
    return message[::-1]


@workflow.defn(name="SandboxEchoWorkflow")
class SandboxEchoWorkflow:
    @workflow.run
    async def run(self, message: str) -> str:
        reversed_once = await workflow.execute_activity(
            "sandbox_echo", message, start_to_close_timeout=timedelta(seconds=10)
        )
        await workflow.sleep(timedelta(milliseconds=10))
        return f"{reversed_once}:{workflow.uuid4().version}"


@workflow.defn(name="SandboxClockWorkflow")
class SandboxClockWorkflow:
    @workflow.run
    async def run(self) -> str:
        import datetime

        return datetime.datetime.now().isoformat()  # not deterministic: the sandbox refuses it


def test_installed_sdk_takes_compiled_code_and_the_worker_uses_it() -> None:
    from worker import workflow_runner  # not at module level: this module defines sandboxed workflows

    assert compiled_code_supported()
    assert isinstance(workflow_runner(), CompiledSandboxedWorkflowRunner)


def test_each_code_string_is_compiled_once_as_exec_would_compile_it() -> None:
    code = "with __temporal_importer.applied():\n  __temporal_value = 6 * 7\n"
    first = compiled_sandbox_code(code)
    assert compiled_sandbox_code(code) is first
    assert first.co_filename == "<string>"
    namespace: dict[str, object] = {"__temporal_importer": _NoImporter()}
    exec(first, namespace, namespace)
    assert namespace["__temporal_value"] == 42


def test_without_the_sdk_internals_the_plain_sandbox_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sandbox_runner, "sdk_runner", None)
    assert not compiled_code_supported()
    runner = sandbox_runner.workflow_runner(SandboxRestrictions.default)
    assert type(runner) is SandboxedWorkflowRunner


async def test_a_workflow_runs_and_replays_through_the_compiled_sandbox(
    temporal_client: Client, task_queue: str
) -> None:
    runner = sandbox_runner.workflow_runner(SandboxRestrictions.default)
    hits_before = compiled_sandbox_code.cache_info().hits
    async with Worker(
        temporal_client,
        task_queue=task_queue,
        workflows=[SandboxEchoWorkflow],
        activities=[sandbox_echo],
        workflow_runner=runner,
    ):
        handle = await temporal_client.start_workflow(
            SandboxEchoWorkflow.run, "penny", id=f"sandbox-echo-{uuid.uuid4()}", task_queue=task_queue
        )
        assert await handle.result() == "ynnep:4"
    # Every activation entered the sandbox through a cached code object.
    assert compiled_sandbox_code.cache_info().hits > hits_before
    history = await handle.fetch_history()
    result = await Replayer(workflows=[SandboxEchoWorkflow], workflow_runner=runner).replay_workflow(history)
    assert result.replay_failure is None


async def test_the_compiled_sandbox_still_refuses_a_clock_read(temporal_client: Client, task_queue: str) -> None:
    runner = sandbox_runner.workflow_runner(SandboxRestrictions.default)
    async with Worker(temporal_client, task_queue=task_queue, workflows=[SandboxClockWorkflow], workflow_runner=runner):
        handle = await temporal_client.start_workflow(
            SandboxClockWorkflow.run, id=f"sandbox-clock-{uuid.uuid4()}", task_queue=task_queue
        )
        try:
            failure = await _first_task_failure(handle)
        finally:
            await handle.terminate("test over")
    assert "Cannot access datetime.datetime.now" in failure, failure


async def _first_task_failure(handle: WorkflowHandle[Any, Any]) -> str:
    deadline = time.monotonic() + WAIT_FOR_TASK_FAILURE_SECONDS
    while time.monotonic() < deadline:
        async for event in handle.fetch_history_events():
            if event.event_type == EventType.EVENT_TYPE_WORKFLOW_TASK_FAILED:
                failure = event.workflow_task_failed_event_attributes.failure
                return f"{failure.message} {failure.cause.message if failure.HasField('cause') else ''}"
        await asyncio.sleep(0.2)
    raise AssertionError("the workflow task never failed: the sandbox let the clock read through")


class _NoImporter:
    def applied(self) -> _NoImporter:
        return self

    def __enter__(self) -> None:
        return None

    def __exit__(self, *_: object) -> None:
        return None
