"""Replay: running payments must survive code changes.

- Every history recorded in tests/histories/ (real runs of earlier workflow code) replays
  against the current PaymentWorkflow without non-determinism. A behaviour change that
  would break them needs `workflow.patched`.
- A payment run now replays too (the current code is deterministic).

To record new histories: `PENNY_RECORD_HISTORIES=1 .venv/bin/pytest tests/test_payment_replay.py`.
They are written as `<RECORDING_PREFIX><name>.json`, next to the older ones, which stay: the
histories without a prefix were recorded before patch `fault-paths-v2` and replay through
the frozen LegacyPaymentWorkflow; the `fault_paths_v2_` ones replay through the current code
before patch `prepare-screens-v1` (a separate risk_check local activity); the
`prepare_screens_v1_` ones before patch `fee-from-intent-v1` (the fee looked up with
stripe_charge_balance); the `fee_from_intent_v1_` ones before patch
`unclaimed-intent-events-v1` (an intent event claiming no status was looked up at Stripe); the
`unclaimed_intent_events_v1_` ones through the current code.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from pathlib import Path

import pytest
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from penny.payload_converter import DATA_CONVERTER
from tests.payment_fixtures import PaymentStack
from tests.test_payment_workflow import new_order, settle, start, wait_for_status
from workflows.health import HealthCheckWorkflow
from workflows.payment import PaymentWorkflow
from workflows.payment_models import (
    UPDATE_CAPTURE,
    UPDATE_RESOLVE_REVIEW,
    CaptureRequest,
    PaymentState,
    ResolveReviewRequest,
    SplitRecipientSpec,
)

HISTORIES = Path(__file__).parent / "histories"
RECORDING_PREFIX = "unclaimed_intent_events_v1_"
EARLIER_PREFIXES = ("fee_from_intent_v1_", "prepare_screens_v1_", "fault_paths_v2_")


def recorded_histories() -> list[Path]:
    return sorted(HISTORIES.glob("*.json"))


def replayer() -> Replayer:
    # The worker's converter (penny.payload_converter): recorded payloads decode with it as they did;
    # and the worker's sandbox runner (its pass-through modules, its code compiled once).
    from worker import workflow_runner

    return Replayer(
        workflows=[PaymentWorkflow, HealthCheckWorkflow],
        data_converter=DATA_CONVERTER,
        workflow_runner=workflow_runner(),
    )


@pytest.mark.parametrize("history_file", recorded_histories(), ids=lambda path: path.stem)
async def test_recorded_history_replays(history_file: Path) -> None:
    history = WorkflowHistory.from_json(history_file.stem, history_file.read_text())
    await replayer().replay_workflow(history)


def test_histories_are_recorded() -> None:
    names = [path.stem for path in recorded_histories()]
    assert len([name for name in names if not name.startswith((RECORDING_PREFIX, *EARLIER_PREFIXES))]) >= 2, (
        "pre-patch histories"
    )
    for prefix in (RECORDING_PREFIX, *EARLIER_PREFIXES):
        assert len([name for name in names if name.startswith(prefix)]) >= 4, f"{prefix} histories"


async def _replay_and_maybe_record(stack: PaymentStack, workflow_id: str, name: str) -> None:
    handle = stack.client.get_workflow_handle(workflow_id)
    history = await handle.fetch_history()
    await replayer().replay_workflow(history)
    if os.environ.get("PENNY_RECORD_HISTORIES"):
        (HISTORIES / f"{RECORDING_PREFIX}{name}.json").write_text(history.to_json())


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


async def test_fresh_review_and_operator_retry_replays(payment_stack: PaymentStack) -> None:
    """Transfers to one recipient fail past their rounds: review; the operator's retry pays it; settled."""
    payment = new_order(
        recipients=[
            SplitRecipientSpec(f"acct_s{uuid.uuid4().hex[:8]}", share_bps=6000),
            SplitRecipientSpec(f"acct_d{uuid.uuid4().hex[:8]}", share_bps=4000),
        ]
    )
    failing = payment_stack.emulator.control.add_fault(
        "POST", "/v1/transfers", "error_500_before", params={"destination": payment.recipients[1].account_id}
    )
    _state, handle = await start(payment_stack, payment)
    await wait_for_status(handle, "NEEDS_REVIEW")
    payment_stack.emulator.control.remove_fault(failing)
    await handle.execute_update(
        UPDATE_RESOLVE_REVIEW, ResolveReviewRequest("retry", "recipient fixed", "olga"), result_type=PaymentState
    )
    await settle(payment_stack, handle)
    await _replay_and_maybe_record(payment_stack, handle.id, "transfer_review_operator_retry_settled")
