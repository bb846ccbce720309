"""The API's calls into Temporal: start-and-wait (update-with-start), capture, cancel, refund, an
operator's review resolution, and reading which request started an order's workflow. Temporal
failures become `ApiError`s: refusals by the workflow (its update validators) are 4xx, anything
else 503 (retryable)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from temporalio.client import (
    Client,
    WithStartWorkflowOperation,
    WorkflowUpdateFailedError,
    WorkflowUpdateRPCTimeoutOrCancelledError,
    WorkflowUpdateStage,
)
from temporalio.common import WorkflowIDConflictPolicy, WorkflowIDReusePolicy
from temporalio.exceptions import ApplicationError, WorkflowAlreadyStartedError
from temporalio.service import RPCError, RPCStatusCode

from api import metrics
from api.errors import ApiError, invalid_request, service_unavailable
from penny.settings import Settings
from workflows.payment_models import (
    PAYMENT_WORKFLOW_NAME,
    QUERY_STATE,
    UPDATE_CANCEL,
    UPDATE_CAPTURE,
    UPDATE_FIRST_MILESTONE,
    UPDATE_REFUND,
    UPDATE_RESOLVE_REVIEW,
    CancelRequest,
    CaptureRequest,
    PaymentInput,
    PaymentState,
    RefundRecord,
    RefundRequest,
    ResolveReviewRequest,
    workflow_id_for_order,
)

logger = logging.getLogger("penny.api.temporal")

# The workflow bounds its own wait (first_milestone's max_wait_seconds); our RPC waits a
# little longer so the workflow's answer, not our timeout, normally ends the wait.
FIRST_MILESTONE_RPC_MARGIN_SECONDS = 5.0
QUERY_TIMEOUT_SECONDS = 5.0
UPDATE_TIMEOUT_SECONDS = 60.0  # a capture or cancel calls Stripe with bounded retries
# An accepted refund is answered after at most this long, made or still pending.
REFUND_WAIT_SECONDS = 20.0
HISTORY_READ_TIMEOUT_SECONDS = 5.0


class OrderClosed(Exception):
    """The order's workflow has completed; the reuse policy refuses a second one."""


def _refusal(error: WorkflowUpdateFailedError) -> ApiError:
    # Temporal chains failures through `__cause__` (its `.cause` is the same attribute, but only
    # Temporal's own errors have it).
    cause: BaseException | None = error.cause
    while cause is not None and not isinstance(cause, ApplicationError):
        cause = cause.__cause__
    if isinstance(cause, ApplicationError):
        if cause.type == "InvalidTransition":
            metrics.CONFLICTS.labels("payment_state_conflict").inc()
            return invalid_request("payment_state_conflict", cause.message, status_code=409)
        if cause.type == "InvalidAmount":
            return invalid_request("amount_too_large", cause.message, "amount")
        if cause.type == "RefundRefused":
            details = cause.details[0] if cause.details and isinstance(cause.details[0], dict) else {}
            code = str(details.get("code") or "refund_refused")
            if code in ("payment_disbursement_pending", "refund_in_progress", "payment_state_conflict"):
                metrics.CONFLICTS.labels("payment_state_conflict").inc()
                return invalid_request(code, cause.message, status_code=409)
            param = "amount" if code in ("amount_too_large", "parameter_invalid_integer") else None
            if code == "parameter_invalid":
                param = "reason"
            return invalid_request(code, cause.message, param, status_code=402 if code == "refund_refused" else 400)
        if cause.type == "ResolutionRefused":
            # The operator's outcome contradicts Stripe's state, or would move the payment back.
            return invalid_request("resolution_refused", cause.message, "action", status_code=409)
        if cause.type == "StripeUnavailable":
            # Stripe's state could not be read, so nothing was decided: retry the same request.
            return ApiError(503, "api_error", "stripe_unavailable", cause.message, headers={"Retry-After": "5"})
        if cause.type in ("InvalidRequest", "NotReady"):
            return invalid_request(
                "parameter_invalid", cause.message, status_code=409 if cause.type == "NotReady" else 400
            )
    logger.error("payment update failed: %s", error)
    return ApiError(500, "api_error", "payment_update_failed", "The payment could not process the request.")


def _unavailable(error: BaseException) -> ApiError:
    logger.warning("Temporal call failed: %s: %s", type(error).__name__, error)
    return service_unavailable("The payment engine")


async def start_payment(client: Client, settings: Settings, payment: PaymentInput) -> PaymentState:
    """Start the order's workflow (or attach to the running one) and wait for its first milestone.

    Idempotent by workflow id: a retry, a concurrent duplicate or a different key for the
    same order all reach the same workflow (USE_EXISTING) and get its state.
    """
    workflow_id = workflow_id_for_order(payment.order_id)
    # Started by name (the API does not import the workflow class), so the workflow type is `Any`.
    operation: WithStartWorkflowOperation[Any, PaymentState] = WithStartWorkflowOperation(
        PAYMENT_WORKFLOW_NAME,
        payment,
        id=workflow_id,
        id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
        id_reuse_policy=WorkflowIDReusePolicy.REJECT_DUPLICATE,
        task_queue=settings.temporal_task_queue,
        result_type=PaymentState,
    )
    wait_seconds = max(1, int(settings.first_milestone_wait_seconds))
    try:
        async with asyncio.timeout(wait_seconds + FIRST_MILESTONE_RPC_MARGIN_SECONDS):
            state: PaymentState = await client.execute_update_with_start_workflow(
                UPDATE_FIRST_MILESTONE, wait_seconds, start_workflow_operation=operation, result_type=PaymentState
            )
            return state
    except WorkflowAlreadyStartedError:
        raise OrderClosed from None
    except WorkflowUpdateFailedError as error:
        raise _refusal(error) from None
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError):
        # Still waiting: answer with the current state if the workflow exists.
        return await query_state(client, workflow_id)
    except RPCError as error:
        raise _unavailable(error) from None


async def query_state(client: Client, workflow_id: str) -> PaymentState:
    try:
        async with asyncio.timeout(QUERY_TIMEOUT_SECONDS):
            state: PaymentState | None = await client.get_workflow_handle(workflow_id).query(
                QUERY_STATE, result_type=PaymentState
            )
    except (TimeoutError, RPCError) as error:
        raise _unavailable(error) from None
    if state is None:
        raise _unavailable(RuntimeError(f"{workflow_id} has no state yet"))
    return state


@asynccontextmanager
async def _update_errors() -> AsyncIterator[None]:
    """A workflow update's call, bounded by UPDATE_TIMEOUT_SECONDS, its failures as API errors:
    a refusal by the workflow is a 4xx, a closed payment a 409, anything else a 503."""
    try:
        async with asyncio.timeout(UPDATE_TIMEOUT_SECONDS):
            yield
    except WorkflowUpdateFailedError as error:
        raise _refusal(error) from None
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            metrics.CONFLICTS.labels("payment_state_conflict").inc()
            raise invalid_request(
                "payment_state_conflict", "The payment is closed and accepts no more changes.", status_code=409
            ) from None
        raise _unavailable(error) from None
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError) as error:
        raise _unavailable(error) from None


async def _update(
    client: Client,
    workflow_id: str,
    name: str,
    argument: Any,
    result_type: type[Any] = PaymentState,
    *,
    update_id: str | None = None,
) -> Any:
    async with _update_errors():
        return await client.get_workflow_handle(workflow_id).execute_update(
            name, argument, id=update_id, result_type=result_type
        )


async def capture_payment(client: Client, workflow_id: str, request: CaptureRequest) -> PaymentState:
    state: PaymentState = await _update(client, workflow_id, UPDATE_CAPTURE, request)
    return state


async def cancel_payment(client: Client, workflow_id: str, request: CancelRequest) -> PaymentState:
    state: PaymentState = await _update(client, workflow_id, UPDATE_CANCEL, request)
    return state


async def resolve_payment_review(client: Client, workflow_id: str, request: ResolveReviewRequest) -> PaymentState:
    """An operator's resolution of NEEDS_REVIEW: checked by the workflow against Stripe's state.

    No fixed update id (unlike a refund): Temporal would answer every retry of a request refused
    with 503 `stripe_unavailable` with that same stored failure. A repeat cannot resolve twice
    anyway: the workflow refuses a resolution once the payment has left NEEDS_REVIEW.
    """
    state: PaymentState = await _update(client, workflow_id, UPDATE_RESOLVE_REVIEW, request)
    return state


async def refund_payment(client: Client, workflow_id: str, request: RefundRequest) -> RefundRecord:
    """The refund update, its update id the refund id: Temporal answers a repeat with the first result.

    Bounded like a create: once the workflow has accepted the refund (its validator passed, so
    the refund will be made: the update is durable in the workflow's history), the answer waits
    at most REFUND_WAIT_SECONDS for it to be made; past that it is the refund as it stands
    (`pending`), read from the workflow, instead of an error the client would have to retry.
    """
    handle = client.get_workflow_handle(workflow_id)
    async with _update_errors():
        update = await handle.start_update(
            UPDATE_REFUND,
            request,
            id=request.refund_id,
            wait_for_stage=WorkflowUpdateStage.ACCEPTED,
            result_type=RefundRecord,
        )
    try:
        async with asyncio.timeout(REFUND_WAIT_SECONDS):
            record: RefundRecord = await update.result()
            return record
    except WorkflowUpdateFailedError as error:
        raise _refusal(error) from None
    except (TimeoutError, WorkflowUpdateRPCTimeoutOrCancelledError, RPCError):
        state = await query_state(client, workflow_id)
        for refund in state.refunds:
            if refund.refund_id == request.refund_id:
                return refund
        raise _unavailable(RuntimeError(f"refund {request.refund_id} accepted but not recorded yet")) from None


async def started_with_fingerprint(client: Client, workflow_id: str) -> str | None:
    """The request fingerprint the order's workflow was started with (its first history event)."""
    try:
        async with asyncio.timeout(HISTORY_READ_TIMEOUT_SECONDS):
            async for event in client.get_workflow_handle(workflow_id).fetch_history_events():
                attributes = event.workflow_execution_started_event_attributes
                decoded = await client.data_converter.decode(attributes.input.payloads, [PaymentInput])
                started: PaymentInput = decoded[0]
                return started.request_fingerprint
    except (TimeoutError, RPCError) as error:
        raise _unavailable(error) from None
    return None
