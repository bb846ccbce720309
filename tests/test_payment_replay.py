"""Replay: running payments must survive code changes.

- Every history recorded in tests/histories/ (real runs of earlier workflow code) replays
  against the current PaymentWorkflow without non-determinism. A behaviour change that
  would break them needs `workflow.patched`.
- A payment run now replays too (the current code is deterministic).

To record new histories: `PENNY_RECORD_HISTORIES=1 .venv/bin/pytest tests/test_payment_replay.py`.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from tests.payment_fixtures import PaymentStack
from tests.test_payment_workflow import new_order, settle, start
from workflows.health import HealthCheckWorkflow
from workflows.payment import PaymentWorkflow
from workflows.payment_models import UPDATE_CAPTURE, CaptureRequest, PaymentState

HISTORIES = Path(__file__).parent / "histories"


def recorded_histories() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


def replayer() -> Replayer:
    return Replayer(workflows=[PaymentWorkflow, HealthCheckWorkflow])


@pytest.mark.parametrize("history_file", recorded_histories(), ids=lambda path: path.stem)
async def test_recorded_history_replays(history_file: Path) -> None:
    history = WorkflowHistory.from_json(history_file.stem, history_file.read_text())
    await replayer().replay_workflow(history)


def test_histories_are_recorded() -> None:
    assert len(recorded_histories()) >= 2, "tests/histories must hold recorded payment histories"


async def _replay_and_maybe_record(stack: PaymentStack, workflow_id: str, name: str) -> None:
    handle = stack.client.get_workflow_handle(workflow_id)
    history = await handle.fetch_history()
    await replayer().replay_workflow(history)
    if os.environ.get("PENNY_RECORD_HISTORIES"):
        (HISTORIES / f"{name}.json").write_text(history.to_json())


async def test_fresh_automatic_payment_replays(payment_stack: PaymentStack) -> None:
    payment = new_order()
    state, handle = await start(payment_stack, payment)
    await settle(payment_stack, handle)
    await _replay_and_maybe_record(payment_stack, handle.id, "automatic_capture_settled")


async def test_fresh_manual_capture_replays(payment_stack: PaymentStack) -> None:
    payment = new_order(capture_method="manual")
    state, handle = await start(payment_stack, payment)
    await handle.execute_update(UPDATE_CAPTURE, CaptureRequest(amount=5000), result_type=PaymentState)
    await settle(payment_stack, handle)
    await asyncio.sleep(0)
    await _replay_and_maybe_record(payment_stack, handle.id, "manual_partial_capture_settled")


async def test_fresh_declined_payment_replays(payment_stack: PaymentStack) -> None:
    payment = new_order(payment_method="pm_card_chargeDeclined")
    _state, handle = await start(payment_stack, payment)
    await asyncio.wait_for(handle.result(), 60)
    await _replay_and_maybe_record(payment_stack, handle.id, "declined")


async def test_fresh_uncertain_create_replays(payment_stack: PaymentStack) -> None:
    """A 500 after commit: PROCESSING, lookup by order id, CAPTURED."""
    payment_stack.emulator.control.add_fault("POST", "/v1/payment_intents", "error_500_after", count=1)
    payment = new_order()
    _state, handle = await start(payment_stack, payment)
    await settle(payment_stack, handle)
    await _replay_and_maybe_record(payment_stack, handle.id, "uncertain_create_found_by_lookup")
