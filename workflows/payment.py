"""PaymentWorkflow: one durable workflow per order (id `payment-<order_id>`). It never fails.

Path: prepare (exact split, payments row) → risk check → create + confirm the PaymentIntent
(idempotency key `<workflow id>:create`) → AUTHORIZED (manual capture) or CAPTURED → Stripe
fee booked → one transfer per recipient (`<workflow id>:transfer:<account>`) → SETTLED when
Stripe makes the funds available → open for disputes until the dispute window ends.

This module is the shell. What a Stripe answer or an operator's request means is decided by
the pure core (workflows/payment_core.py); status changes are decided by the state machine
(workflows/state_machine.py) and written by ONE activity, `apply_transition` (row CAS + audit
+ ledger + one outbox event + review item, in one Postgres transaction).

One guard for every activity (`_db`, `_stripe`): an error that outlasts its named retry cap,
or is final (decline, refusal, ledger rejection, state conflict), becomes `StepFailed`; the
step's caller either handles it (a decline fails the payment) or lets it rise to `_guarded`,
which moves the payment to NEEDS_REVIEW with a review item naming the step, the error, the
Stripe ids and how to resume. The workflow execution itself never fails.

Look before acting again (`_stripe_post`): after an ambiguous answer to a Stripe POST, or once
a step's key is older than `stripe_key_reuse_margin_seconds`, the object is looked up first
(PaymentIntent by our metadata, transfer by transfer group and metadata) and the POST is
repeated only if it is not there, under a new key when Stripe saved an answer under the old
one. Every deadline, counter and step record lives in PaymentState, so continue-as-new
carries it.

Payments started before this version run `LegacyPaymentWorkflow` (workflows/payment_legacy.py),
chosen once per execution by `workflow.patched(PATCH_FAULT_PATHS)`.

Deterministic: no I/O, clocks or randomness except through `workflow.*`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import replace
from datetime import timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError, FailureError

with workflow.unsafe.imports_passed_through():
    from activities.payment_types import (
        INVALID_PAYMENT_REQUEST,
        LEDGER_REJECTED,
        TRANSITION_CONFLICT,
        LedgerAction,
        PaymentRowUpdate,
        PreparePaymentInput,
        PreparePaymentResult,
        RecordIgnoredInput,
        ReviewResolution,
        ReviewSpec,
        RiskCheckInput,
        RiskCheckResult,
        TransitionInput,
        TransitionResult,
    )
    from activities.stripe_types import (
        CARD_DECLINED,
        STRIPE_REQUEST_REFUSED,
        ChargeBalance,
        ChargeBalanceInput,
        CreateIntentInput,
        FindIntentInput,
        FindIntentResult,
        FindTransferInput,
        FindTransferResult,
        IntentActionInput,
        IntentSnapshot,
        TransferInput,
        TransferResult,
    )

from workflows import payment_core as core
from workflows import search_attributes as attributes
from workflows.ids import payment_id_from_uuid
from workflows.payment_legacy import LegacyPaymentWorkflow
from workflows.payment_models import (
    PAYMENT_WORKFLOW_NAME,
    QUERY_STATE,
    RESOLUTIONS,
    SIGNAL_STRIPE_EVENT,
    TRANSFER_FAILED,
    TRANSFER_IN_REVIEW,
    TRANSFER_SUCCEEDED,
    UPDATE_CANCEL,
    UPDATE_CAPTURE,
    UPDATE_FIRST_MILESTONE,
    UPDATE_RESOLVE_REVIEW,
    CancelRequest,
    CaptureRequest,
    PaymentInput,
    PaymentState,
    PaymentTimings,
    ResolveReviewRequest,
    StripeEventSignal,
    StripeStep,
    TransferRecord,
)
from workflows.state_machine import FIRST_MILESTONES, TERMINAL_STATES, PaymentEvent, PaymentStatus, decide

S = PaymentStatus
E = PaymentEvent
ResultT = TypeVar("ResultT")

PATCH_FAULT_PATHS = "fault-paths-v2"
DATABASE_ACTIVITY_TIMEOUT = timedelta(seconds=30)
FIRST_MILESTONE_WAIT_SECONDS_DEFAULT = 20
FIRST_MILESTONE_WAIT_SECONDS_MAX = 60
PROCESSED_EVENT_IDS_MAX = 500
HISTORY_LINES_MAX = 200
TRANSFER_ROUNDS_MAX = 3
# Preparing the payment (its row does not exist yet, so it cannot go to review): this many
# rounds of capped database retries, a poll interval apart, then the payment FAILS as
# `not_recorded` (nothing was sent to Stripe, no money moved).
PREPARE_ROUNDS_MAX = 3
# The review write is the last resort: if the database refuses even that past its cap, the
# workflow waits this long and writes it again (the search attribute already says NEEDS_REVIEW).
REVIEW_WRITE_RETRY_SECONDS = 60
ERROR_TEXT_MAX = 500
# Errors no database retry can fix.
DATABASE_FINAL_ERRORS = [TRANSITION_CONFLICT, LEDGER_REJECTED, INVALID_PAYMENT_REQUEST]
# Errors no Stripe retry under the same key can fix.
STRIPE_FINAL_ERRORS = [CARD_DECLINED, STRIPE_REQUEST_REFUSED, "StripeServerError", INVALID_PAYMENT_REQUEST]
CHARGED_STATUSES = ("succeeded", "requires_capture")


def stripe_retry(timings: PaymentTimings) -> RetryPolicy:
    """Retries for one Stripe call with one idempotency key: unanswered attempts only.

    The cap (attempts x maximum interval plus timeouts) ends within minutes, far inside
    Stripe's 24 h idempotency window, so a retry can never turn into a second charge.
    """
    return RetryPolicy(
        initial_interval=timedelta(seconds=timings.stripe_initial_interval_seconds),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=timings.stripe_maximum_interval_seconds),
        maximum_attempts=timings.stripe_attempts_max,
        non_retryable_error_types=STRIPE_FINAL_ERRORS,
    )


def database_retry(timings: PaymentTimings) -> RetryPolicy:
    """Database steps: transient errors (lock timeouts, connection loss) retried under a cap."""
    return RetryPolicy(
        initial_interval=timedelta(milliseconds=200),
        maximum_interval=timedelta(seconds=timings.database_maximum_interval_seconds),
        maximum_attempts=timings.database_attempts_max,
        non_retryable_error_types=DATABASE_FINAL_ERRORS,
    )


class StepFailed(Exception):
    """An activity step that retrying will not fix. Unhandled, it sends the payment to review."""

    def __init__(
        self, step: str, error_type: str | None, message: str, *, kind: str = "step_failed", resume: str = ""
    ) -> None:
        super().__init__(message)
        self.step = step
        self.error_type = error_type
        self.message = message[:ERROR_TEXT_MAX]
        self.kind = kind
        self.resume = resume or "resolve with `retry`: the step runs again, looking Stripe up first"
        self.details: dict[str, str] = {}


def _failure(step: str, error: FailureError) -> StepFailed:
    # A remote activity's failure arrives as ActivityError(cause); a local one's may arrive bare.
    cause = error.cause if isinstance(error, ActivityError) else error
    error_type = cause.type if isinstance(cause, ApplicationError) else type(cause).__name__
    failure = StepFailed(step, error_type, str(cause or error))
    if isinstance(cause, ApplicationError) and cause.details and isinstance(cause.details[0], dict):
        failure.details = {str(key): str(value)[:200] for key, value in cause.details[0].items() if value is not None}
    return failure


@workflow.defn(name=PAYMENT_WORKFLOW_NAME)
class PaymentWorkflow:
    def __init__(self) -> None:
        # Decided once per execution: histories recorded before the patch replay the old code.
        self._legacy = None if workflow.patched(PATCH_FAULT_PATHS) else LegacyPaymentWorkflow()
        self._state: PaymentState | None = None
        self._input: PaymentInput | None = None
        self._lock = asyncio.Lock()
        self._events: list[StripeEventSignal] = []
        self._duplicate_intents: list[str] = []

    # ----------------------------------------------------------------- queries, updates, signals

    @workflow.query(name=QUERY_STATE)
    def state(self) -> PaymentState | None:
        if self._legacy is not None:
            return self._legacy.state()
        return self._state

    @workflow.update(name=UPDATE_FIRST_MILESTONE)
    async def first_milestone(self, max_wait_seconds: int = FIRST_MILESTONE_WAIT_SECONDS_DEFAULT) -> PaymentState:
        """Answer once the payment reaches its first milestone, or after a bounded wait."""
        if self._legacy is not None:
            return await self._legacy.first_milestone(max_wait_seconds)
        try:
            await workflow.wait_condition(
                lambda: self._state is not None and S(self._state.status) in FIRST_MILESTONES,
                timeout=timedelta(seconds=max(1, min(max_wait_seconds, FIRST_MILESTONE_WAIT_SECONDS_MAX))),
            )
        except TimeoutError:
            pass
        await workflow.wait_condition(lambda: self._state is not None)
        return self._require_state()

    @workflow.update(name=UPDATE_CAPTURE)
    async def capture(self, request: CaptureRequest) -> PaymentState:
        if self._legacy is not None:
            return await self._legacy.capture(request)
        async with self._lock:
            state = self._require_state()
            self._validate_capture(request)  # re-checked under the lock: state may have moved
            amount = request.amount if request.amount is not None else state.amount_capturable
            await self._guarded(lambda: self._capture(amount, request_id=request.request_id))
            return state

    @capture.validator
    def _validate_capture_update(self, request: CaptureRequest) -> None:
        if self._legacy is not None:
            self._legacy._validate_capture_update(request)
            return
        self._validate_capture(request)

    @workflow.update(name=UPDATE_CANCEL)
    async def cancel(self, request: CancelRequest) -> PaymentState:
        if self._legacy is not None:
            return await self._legacy.cancel(request)
        async with self._lock:
            state = self._require_state()
            self._validate_cancel(request)
            await self._guarded(
                lambda: self._cancel_intent(
                    request.reason or "requested_by_customer",
                    actor="api",
                    why="canceled by the merchant",
                    request_id=request.request_id,
                )
            )
            return state

    @cancel.validator
    def _validate_cancel_update(self, request: CancelRequest) -> None:
        if self._legacy is not None:
            self._legacy._validate_cancel_update(request)
            return
        self._validate_cancel(request)

    @workflow.update(name=UPDATE_RESOLVE_REVIEW)
    async def resolve_review(self, request: ResolveReviewRequest) -> PaymentState:
        """An operator's resolution: checked against Stripe's state, booked like the normal path."""
        if self._legacy is not None:
            return await self._legacy.resolve_review(request)
        async with self._lock:
            state = self._require_state()
            self._validate_resolve(request)  # re-checked under the lock
            try:
                intent = await self._current_intent()
            except StepFailed as failure:
                raise ApplicationError(
                    f"could not read Stripe's state ({failure.message}); nothing changed, try again",
                    type="StripeUnavailable",
                ) from None
            plan = core.plan_resolution(state, request.resolution, intent)
            if isinstance(plan, core.Refusal):
                raise ApplicationError(plan.reason, type="ResolutionRefused")
            actor = f"operator:{request.operator or 'unknown'}"
            if request.note:
                plan.reason = f"{plan.reason}; {request.note}"
            resolution = ReviewResolution(actor=actor, resolution=request.resolution, note=request.note)
            await self._guarded(lambda: self._apply_plan(plan, actor=actor, resolution=resolution))
            return state

    @resolve_review.validator
    def _validate_resolve_update(self, request: ResolveReviewRequest) -> None:
        if self._legacy is not None:
            self._legacy._validate_resolve(request)
            return
        self._validate_resolve(request)

    def _validate_resolve(self, request: ResolveReviewRequest) -> None:
        state = self._require_state()
        if state.status != S.NEEDS_REVIEW:
            raise ApplicationError(f"payment is {state.status}, not NEEDS_REVIEW", type="InvalidTransition")
        if request.resolution not in RESOLUTIONS:
            raise ApplicationError(f"unknown resolution {request.resolution!r}", type="InvalidRequest")

    @workflow.signal(name=SIGNAL_STRIPE_EVENT)
    def stripe_event(self, event: StripeEventSignal) -> None:
        if self._legacy is not None:
            self._legacy.stripe_event(event)
            return
        state = self._state
        if state is not None and event.event_id in state.processed_event_ids:
            return  # a duplicate delivery: applied once already
        if any(queued.event_id == event.event_id for queued in self._events):
            return
        self._events.append(event)

    # ----------------------------------------------------------------- main path

    @workflow.run
    async def run(self, request: PaymentInput) -> PaymentState:
        if self._legacy is not None:
            return await self._legacy.run(request)
        self._input = request
        if request.carried_state is not None:
            self._state = request.carried_state
            self._upsert_search_attributes()
        else:
            await self._guarded(lambda: self._start(request))
        while True:
            await self._live()
            if await self._finished():
                return self._require_state()

    async def _start(self, request: PaymentInput) -> None:
        payment_id = payment_id_from_uuid(workflow.uuid4())
        self._state = PaymentState(
            payment_id=payment_id,
            order_id=request.order_id,
            status=S.CREATED,
            amount=request.amount,
            currency=request.currency,
            customer=request.customer,
            capture_method=request.capture_method,
        )
        self._upsert_search_attributes()
        prepared = await self._prepare(request, payment_id)
        if prepared is None:
            return
        self._state.split = prepared.split
        async with self._lock:
            risk = await self._db(
                "risk_check",
                RiskCheckInput(
                    payment_id=payment_id,
                    customer=request.customer,
                    amount=request.amount,
                    currency=request.currency,
                    payment_method=request.payment_method,
                ),
                RiskCheckResult,
            )
            if risk.outcome == "block":
                self._state.failure_code = "risk_blocked"
                self._state.failure_message = risk.reason
                await self._transition(
                    E.RISK_BLOCKED,
                    reason=risk.reason,
                    row=PaymentRowUpdate(failure_code="risk_blocked", failure_message=risk.reason),
                )
            elif risk.outcome == "review":
                await self._enter_review(
                    "risk_review",
                    f"risk check: {risk.reason}",
                    {"outcome": risk.outcome, "resume": "resolve with `retry` to charge, `failed` to refuse"},
                )
            else:
                await self._transition(E.RISK_ALLOWED, reason=risk.reason)
                self._state.charge_requested = True

    async def _prepare(self, request: PaymentInput, payment_id: str) -> PreparePaymentResult | None:
        """Create the payments row; None when the payment ended (invalid, or never recorded)."""
        state = self._require_state()
        for round_number in range(1, PREPARE_ROUNDS_MAX + 1):
            try:
                return await self._db(
                    "prepare_payment",
                    PreparePaymentInput(
                        payment_id=payment_id,
                        workflow_id=workflow.info().workflow_id,
                        order_id=request.order_id,
                        amount=request.amount,
                        currency=request.currency,
                        customer=request.customer,
                        capture_method=request.capture_method,
                        recipients=request.recipients,
                        platform_fee_bps=request.platform_fee_bps,
                        tax_amount=request.tax_amount,
                        metadata=request.metadata,
                        request_fingerprint=request.request_fingerprint,
                        request_id=request.request_id,
                    ),
                    PreparePaymentResult,
                )
            except StepFailed as failure:
                if failure.error_type == INVALID_PAYMENT_REQUEST:
                    # Invalid before anything was written: nothing to undo, the payment simply fails.
                    self._fail_unrecorded("invalid_request", failure.message)
                    return None
                self._note(f"prepare round {round_number} failed: {failure.message}")
                await workflow.sleep(timedelta(seconds=self._timings().processing_poll_interval_seconds))
        self._fail_unrecorded("not_recorded", "the database refused the payment; nothing was sent to Stripe")
        assert state.status == S.FAILED
        return None

    def _fail_unrecorded(self, code: str, message: str) -> None:
        state = self._require_state()
        state.status = S.FAILED
        state.failure_code = code
        state.failure_message = message
        self._note(f"{code}: {message}")
        self._upsert_search_attributes()

    async def _live(self) -> None:
        """Drive the payment until it is terminal or its dispute window ends."""
        while True:
            try:
                keep_going = await self._step()
            except StepFailed as failure:
                await self._review_failure(failure)
                keep_going = True
            if not keep_going:
                return
            if self._continue_as_new_due():
                await self._continue_as_new()

    async def _step(self) -> bool:
        """One step of the payment's life; False once there is nothing left to wait for."""
        await self._drain_events()
        state = self._require_state()
        status = S(state.status)
        timings = self._timings()
        now = workflow.now().timestamp()
        if status in TERMINAL_STATES:
            return False
        if state.charge_requested and status in (S.CREATED, S.PROCESSING):
            async with self._lock:
                if state.charge_requested:
                    await self._charge()
            return True
        if status is S.NEEDS_REVIEW:
            await self._wait_for_change(status, None)
        elif status in (S.REQUIRES_ACTION, S.REQUIRES_PAYMENT_METHOD):
            # The customer completes the action (webhook or poll) or the wait runs out.
            if state.action_deadline_unix_seconds is None:
                state.action_deadline_unix_seconds = now + timings.requires_action_timeout_seconds
            if not await self._wait_for_change(status, timings.processing_poll_interval_seconds):
                expired = workflow.now().timestamp() >= state.action_deadline_unix_seconds
                async with self._lock:
                    if S(state.status) is status:
                        await self._poll_intent(abandon_reason="requires_action timed out" if expired else None)
        elif status in (S.PROCESSING, S.CREATED):
            if not await self._wait_for_change(status, timings.processing_poll_interval_seconds):
                async with self._lock:
                    if S(state.status) is status:
                        await self._poll_intent(abandon_reason=None)
        elif status is S.AUTHORIZED:
            # The hold expires a fixed time after authorisation, however many events arrive.
            if state.authorization_deadline_unix_seconds is None:
                state.authorization_deadline_unix_seconds = now + timings.authorization_expiry_seconds
            remaining = state.authorization_deadline_unix_seconds - now
            if remaining <= 0 or not await self._wait_for_change(status, remaining):
                async with self._lock:
                    if S(state.status) is S.AUTHORIZED and (
                        workflow.now().timestamp() >= state.authorization_deadline_unix_seconds
                    ):
                        await self._cancel_intent("abandoned", actor="timer", why="authorization expired")
        elif status is S.CAPTURED:
            await self._after_capture()
        else:
            # SETTLED, DISPUTED, PARTIALLY_REFUNDED: open for disputes until the window ends.
            if state.dispute_window_ends_unix_seconds is None:
                state.dispute_window_ends_unix_seconds = now + timings.dispute_window_seconds
            remaining = state.dispute_window_ends_unix_seconds - now
            closed = remaining <= 0 or not await self._wait_for_change(status, remaining)
            if closed and S(state.status) is status and not self._events:
                self._note("dispute window closed")
                return False
        return True

    async def _finished(self) -> bool:
        """Before returning: let handlers finish and handle every queued event (none is dropped).

        False when a late event moved the payment somewhere that needs the workflow again
        (e.g. Stripe contradicting a FAILED payment sends it to review).
        """
        state = self._require_state()
        status = state.status
        await workflow.wait_condition(workflow.all_handlers_finished)
        if not self._events:
            return True
        await self._drain_events()
        return state.status == status

    async def _wait_for_change(self, status: PaymentStatus, timeout_seconds: float | None) -> bool:
        try:
            await workflow.wait_condition(
                lambda: bool(self._events) or S(self._require_state().status) is not status,
                timeout=timedelta(seconds=max(1.0, timeout_seconds)) if timeout_seconds is not None else None,
            )
        except TimeoutError:
            return False
        await self._drain_events()
        return True

    def _continue_as_new_due(self) -> bool:
        info = workflow.info()
        history_max = self._timings().continue_as_new_history_length_max
        return info.is_continue_as_new_suggested() or (
            history_max > 0 and info.get_current_history_length() >= history_max
        )

    async def _continue_as_new(self) -> None:
        await workflow.wait_condition(workflow.all_handlers_finished)
        # Queued Stripe events are not carried over: handle them first, or they would be lost
        # (the webhook inbox has already marked them delivered).
        await self._drain_events()
        state = self._require_state()
        state.continued_as_new += 1
        self._note(f"continuing as new (run {state.continued_as_new + 1})")
        workflow.continue_as_new(replace(self._require_input(), carried_state=state))

    # ----------------------------------------------------------------- the guard

    async def _guarded(self, body: Callable[[], Awaitable[object]]) -> None:
        try:
            await body()
        except StepFailed as failure:
            await self._review_failure(failure)

    async def _review_failure(self, failure: StepFailed, *, stripe_event_id: str | None = None) -> None:
        state = self._require_state()
        details = {
            **failure.details,
            "step": failure.step,
            "error_type": failure.error_type or "",
            "error": failure.message,
            "resume": failure.resume,
        }
        if state.stripe_charge_id:
            details["charge"] = state.stripe_charge_id
        unpaid = [record.account_id for record in state.transfers if record.transfer_id is None]
        if unpaid:
            details["unpaid_recipients"] = ",".join(unpaid)[:ERROR_TEXT_MAX]
        await self._enter_review(
            failure.kind, f"{failure.step} failed: {failure.message}", details, stripe_event_id=stripe_event_id
        )

    async def _enter_review(
        self, kind: str, reason: str, details: dict[str, str], *, stripe_event_id: str | None = None
    ) -> None:
        """Move the payment to NEEDS_REVIEW with a review item (another item if it is there already)."""
        state = self._require_state()
        details = {**details, "status_before": str(state.status)}
        if state.stripe_payment_intent_id:
            details["payment_intent"] = state.stripe_payment_intent_id
        already = state.status == S.NEEDS_REVIEW
        review = ReviewSpec(kind=kind, reason=reason[:ERROR_TEXT_MAX], details=details)
        while True:
            try:
                if already:
                    await self._book(f"review:{state.transition_count}:{kind}", [], reason, review=review)
                else:
                    before = state.status
                    await self._transition(E.REVIEW, reason=reason[:ERROR_TEXT_MAX], review=review, force=True)
                    state.review_status_before = before
                return
            except StepFailed as failure:
                # Even the review cannot be written (the database is down past its cap): say so
                # where operators look (the Temporal UI), and write it again later.
                workflow.logger.error("payment %s: review not written: %s", state.payment_id, failure.message)
                self._note(f"review not written yet ({failure.message}); retrying")
                workflow.upsert_search_attributes([attributes.PAYMENT_STATUS.value_set(str(S.NEEDS_REVIEW))])
                await workflow.sleep(timedelta(seconds=REVIEW_WRITE_RETRY_SECONDS))

    async def _db(self, step: str, argument: object, result_type: type[ResultT]) -> ResultT:
        try:
            return await workflow.execute_local_activity(
                step,
                argument,
                result_type=result_type,
                start_to_close_timeout=DATABASE_ACTIVITY_TIMEOUT,
                retry_policy=database_retry(self._timings()),
            )
        except FailureError as error:
            raise _failure(step, error) from None

    async def _stripe(self, step: str, argument: object, result_type: type[ResultT]) -> ResultT:
        timings = self._timings()
        try:
            return await workflow.execute_activity(
                step,
                argument,
                result_type=result_type,
                start_to_close_timeout=timedelta(seconds=timings.stripe_call_timeout_seconds),
                retry_policy=stripe_retry(timings),
            )
        except FailureError as error:
            raise _failure(step, error) from None

    async def _stripe_post(
        self,
        step: str,
        base_key: str,
        act: Callable[[str], Awaitable[ResultT]],
        lookup: Callable[[], Awaitable[ResultT | None]],
        what: str,
    ) -> ResultT:
        """One Stripe POST, looked up before it is ever sent again. One key per distinct request."""
        state = self._require_state()
        timings = self._timings()
        record = state.stripe_steps.get(base_key)
        if record is None:
            record = state.stripe_steps[base_key] = StripeStep(first_attempt_unix_seconds=workflow.now().timestamp())
        last = ""
        for _ in range(timings.uncertain_rounds_max):
            now = workflow.now().timestamp()
            key_old = now - record.first_attempt_unix_seconds > timings.stripe_key_reuse_margin_seconds
            if record.attempts > 0 or key_old:
                found = await lookup()
                if found is not None:
                    return found
                if record.key_spent or key_old:
                    record.key_index += 1
                    record.key_spent = False
                    record.first_attempt_unix_seconds = now
            key = base_key if record.key_index == 0 else f"{base_key}:{record.key_index + 1}"
            record.attempts += 1
            try:
                return await act(key)
            except StepFailed as failure:
                # Stripe keeps an answer it gave under a key: the next request needs a new one.
                record.key_spent = record.key_spent or failure.error_type in (
                    "StripeServerError",
                    STRIPE_REQUEST_REFUSED,
                    CARD_DECLINED,
                )
                if not core.is_ambiguous(failure.error_type):
                    raise
                last = failure.message
                self._note(f"{step}: outcome unknown ({failure.error_type}); looking it up before acting again")
        raise StepFailed(
            step,
            "OutcomeUnknown",
            f"outcome unknown after {timings.uncertain_rounds_max} rounds; no {what} found at Stripe ({last})",
            kind="processor_uncertain",
        )

    # ----------------------------------------------------------------- charge

    async def _charge(self) -> None:
        request = self._require_input()
        state = self._require_state()
        split = state.split
        single_destination = request.capture_method == "automatic" and split is not None and len(split.parts) == 1
        create = CreateIntentInput(
            idempotency_key=f"{workflow.info().workflow_id}:create",
            order_id=request.order_id,
            payment_id=state.payment_id,
            amount=request.amount,
            currency=request.currency,
            customer=request.customer,
            payment_method=request.payment_method,
            capture_method=request.capture_method,
            description=request.description,
            metadata=request.metadata,
            transfer_group=request.order_id,
            destination_account=split.parts[0].account_id if single_destination and split else None,
            application_fee_amount=(split.platform_fee + split.tax) if single_destination and split else None,
        )

        async def act(key: str) -> IntentSnapshot:
            return await self._stripe(
                "stripe_create_payment_intent", replace(create, idempotency_key=key), IntentSnapshot
            )

        async def lookup() -> IntentSnapshot | None:
            if S(state.status) is not S.PROCESSING:
                await self._transition(E.PROCESSING, reason="create outcome unknown: looking it up by order id")
            return await self._find_intent()

        try:
            intent = await self._stripe_post("create", create.idempotency_key, act, lookup, "PaymentIntent")
        except StepFailed as failure:
            if failure.error_type == CARD_DECLINED:
                state.charge_requested = False
                await self._declined(failure)
                return
            if failure.error_type == STRIPE_REQUEST_REFUSED:
                failure.kind = "stripe_refused"
            state.charge_requested = False
            raise
        state.charge_requested = False
        await self._apply_intent(intent, actor="workflow", reason="PaymentIntent confirmed")

    async def _find_intent(self) -> IntentSnapshot | None:
        result = await self._stripe(
            "stripe_find_payment_intent", FindIntentInput(order_id=self._require_input().order_id), FindIntentResult
        )
        if len(result.charged_intent_ids) > 1:
            self._duplicate_intents = result.charged_intent_ids
        return result.intent if result.found else None

    async def _current_intent(self) -> IntentSnapshot | None:
        """Stripe's PaymentIntent for this payment now (None: Stripe has none for the order)."""
        state = self._require_state()
        if state.stripe_payment_intent_id:
            return await self._stripe("stripe_retrieve_payment_intent", state.stripe_payment_intent_id, IntentSnapshot)
        return await self._find_intent()

    async def _declined(self, failure: StepFailed) -> None:
        code = failure.details.get("decline_code") or failure.details.get("code") or "card_declined"
        message = failure.details.get("message") or failure.message
        state = self._require_state()
        state.failure_code, state.failure_message = code, message
        await self._transition(
            E.DECLINED,
            reason=f"card declined: {code}",
            row=PaymentRowUpdate(failure_code=code, failure_message=message),
        )

    async def _apply_intent(
        self, intent: IntentSnapshot, *, actor: str, reason: str, stripe_event_id: str | None = None
    ) -> bool:
        """Move the payment to what Stripe says the PaymentIntent is (forward only)."""
        state = self._require_state()
        state.stripe_payment_intent_id = intent.id
        state.stripe_status = intent.status
        if intent.status in CHARGED_STATUSES:
            state.stripe_charge_id = intent.latest_charge
        if intent.status == "requires_action":
            state.next_action_url = intent.next_action_url
        plan = core.plan_for_intent(state, intent, reason)
        applied = False
        if plan is None:
            state.unknown_status_polls += 1
            self._note(f"unknown PaymentIntent status {intent.status} ({state.unknown_status_polls})")
            if state.unknown_status_polls >= self._timings().unknown_status_polls_max:
                raise StepFailed(
                    "poll",
                    "UnknownStatus",
                    f"Stripe reports PaymentIntent status {intent.status!r}, which Penny does not know",
                    kind="unknown_status",
                )
        else:
            from_processor = actor != "workflow" or plan.event is E.PROCESSING
            applied = await self._apply_plan(
                plan, actor=actor, stripe_event_id=stripe_event_id, from_processor=from_processor
            )
        if self._duplicate_intents:
            duplicates, self._duplicate_intents = self._duplicate_intents, []
            raise StepFailed(
                "create",
                "DuplicateCharge",
                f"{len(duplicates)} PaymentIntents of this order moved money: {', '.join(duplicates)}",
                kind="duplicate_charge",
                resume="refund the extra PaymentIntents at Stripe, then resolve with `retry`",
            )
        return applied

    async def _apply_plan(
        self,
        plan: core.Plan,
        *,
        actor: str,
        stripe_event_id: str | None = None,
        request_id: str | None = None,
        from_processor: bool = False,
        resolution: ReviewResolution | None = None,
    ) -> bool:
        state = self._require_state()
        applied = await self._transition(
            plan.event,
            actor=actor,
            reason=plan.reason,
            ledger=plan.ledger,
            row=plan.row,
            stripe_event_id=stripe_event_id,
            request_id=request_id,
            from_processor=from_processor,
            resolution=resolution,
        )
        if applied:
            if plan.row.stripe_payment_intent_id is not None:
                state.stripe_payment_intent_id = plan.row.stripe_payment_intent_id
            if plan.row.stripe_charge_id is not None:
                state.stripe_charge_id = plan.row.stripe_charge_id
            if plan.amount_captured is not None:
                state.amount_captured = plan.amount_captured
            if plan.amount_capturable is not None:
                state.amount_capturable = plan.amount_capturable
            if plan.failure_code is not None:
                state.failure_code, state.failure_message = plan.failure_code, plan.failure_message
            if plan.charge_requested:
                state.charge_requested = True
            state.processing_polls = 0
            state.unknown_status_polls = 0
        return applied

    async def _poll_intent(self, abandon_reason: str | None) -> None:
        """Poll Stripe for a payment waiting on the processor or the customer."""
        state = self._require_state()
        intent: IntentSnapshot | None = None
        try:
            intent = await self._current_intent()
        except StepFailed as failure:
            self._note(f"poll failed: {failure.message}")
        if intent is not None and intent.status not in ("requires_action", "processing"):
            await self._apply_intent(intent, actor="poll", reason="status from Stripe (poll)")
            return
        if abandon_reason is not None and state.stripe_payment_intent_id:
            await self._cancel_intent("abandoned", actor="timer", why=abandon_reason)
            return
        if S(state.status) is not S.PROCESSING:
            return
        state.processing_polls += 1
        if state.processing_polls >= self._timings().processing_polls_max:
            raise StepFailed(
                "poll",
                "StillProcessing",
                f"still {state.status} after {state.processing_polls} polls",
                kind="processor_uncertain",
            )

    # ----------------------------------------------------------------- manual capture and cancel

    def _validate_capture(self, request: CaptureRequest) -> None:
        state = self._require_state()
        if state.status != S.AUTHORIZED:
            raise ApplicationError(
                f"payment is {state.status}; only AUTHORIZED payments can be captured", type="InvalidTransition"
            )
        if request.amount is not None and not 0 < request.amount <= state.amount_capturable:
            raise ApplicationError(
                f"capture amount must be between 1 and {state.amount_capturable} (the authorized amount)",
                type="InvalidAmount",
            )

    def _validate_cancel(self, request: CancelRequest) -> None:
        state = self._require_state()
        if S(state.status) not in {S.AUTHORIZED, S.REQUIRES_ACTION, S.REQUIRES_PAYMENT_METHOD}:
            raise ApplicationError(
                f"payment is {state.status}; only AUTHORIZED or REQUIRES_ACTION payments can be canceled",
                type="InvalidTransition",
            )

    async def _retrieve_unless(self, waiting_status: str) -> IntentSnapshot | None:
        """Lookup for an action on the PaymentIntent: None while it still waits for that action."""
        state = self._require_state()
        assert state.stripe_payment_intent_id is not None
        intent = await self._stripe("stripe_retrieve_payment_intent", state.stripe_payment_intent_id, IntentSnapshot)
        return None if intent.status == waiting_status else intent

    async def _capture(self, amount: int, *, request_id: str) -> None:
        state = self._require_state()
        intent_id = state.stripe_payment_intent_id
        assert intent_id is not None

        async def act(key: str) -> IntentSnapshot:
            return await self._stripe(
                "stripe_capture_payment_intent", IntentActionInput(intent_id, key, amount=amount), IntentSnapshot
            )

        intent = await self._stripe_post(
            "capture",
            f"{workflow.info().workflow_id}:capture:{amount}",
            act,
            lambda: self._retrieve_unless("requires_capture"),
            "capture",
        )
        if intent.status != "succeeded":
            await self._apply_intent(
                intent, actor="workflow", reason=f"capture found the PaymentIntent {intent.status}"
            )
            return
        released = state.amount_capturable - intent.amount_received
        plan = core.plan_for_intent(
            state, intent, f"captured {intent.amount_received}" + (f", released {released}" if released else "")
        )
        assert plan is not None
        await self._apply_plan(plan, actor="api", request_id=request_id)

    async def _cancel_intent(self, reason: str, *, actor: str, why: str, request_id: str = "") -> None:
        """Cancel at Stripe (key per reason: one key, one request) and record CANCELED."""
        state = self._require_state()
        intent_id = state.stripe_payment_intent_id
        if intent_id:

            async def act(key: str) -> IntentSnapshot:
                return await self._stripe(
                    "stripe_cancel_payment_intent", IntentActionInput(intent_id, key, reason=reason), IntentSnapshot
                )

            async def lookup() -> IntentSnapshot | None:
                intent = await self._stripe("stripe_retrieve_payment_intent", intent_id, IntentSnapshot)
                return intent if intent.status in ("canceled", "succeeded") else None

            intent = await self._stripe_post(
                "cancel", f"{workflow.info().workflow_id}:cancel:{reason}", act, lookup, "cancellation"
            )
            if intent.status != "canceled":
                await self._apply_intent(
                    intent, actor="workflow", reason=f"cancel found the PaymentIntent {intent.status}"
                )
                return
        plan = core.Plan(E.CANCELED, why, row=PaymentRowUpdate(amount_capturable=0), amount_capturable=0)
        if core.held_before(state):
            plan.ledger = [LedgerAction("release_hold")]
        await self._apply_plan(plan, actor=actor, request_id=request_id or None)

    # ----------------------------------------------------------------- after capture

    async def _after_capture(self) -> None:
        """CAPTURED: pay every recipient, then wait for Stripe to make the funds available."""
        state = self._require_state()
        if not state.fee_booked or any(not record.booked for record in state.transfers):
            async with self._lock:
                if S(state.status) is S.CAPTURED:
                    await self._disburse()
            return
        timings = self._timings()
        now = workflow.now().timestamp()
        if state.settlement_deadline_unix_seconds is None:
            state.settlement_deadline_unix_seconds = now + timings.settlement_timeout_seconds
        if now >= state.settlement_deadline_unix_seconds:
            raise StepFailed(
                "settlement",
                "SettlementOverdue",
                "funds not available within the settlement timeout",
                kind="settlement_overdue",
            )
        # Funds are never available right after the capture: wait (or a webhook hint) first.
        if state.settlement_polled and state.stripe_charge_id:
            state.settlement_hint = False  # consumed by this poll
            async with self._lock:
                if S(state.status) is not S.CAPTURED:
                    return
                balance = await self._stripe(
                    "stripe_charge_balance", ChargeBalanceInput(state.stripe_charge_id), ChargeBalance
                )
                if balance.status == "available":
                    net = core.settlement_net(state)
                    await self._transition(
                        E.SETTLED,
                        reason=f"funds available ({balance.balance_transaction_id})",
                        ledger=[LedgerAction("settlement", amount=net)] if net > 0 else [],
                    )
                    return
        state.settlement_polled = True
        try:
            await workflow.wait_condition(
                lambda: state.settlement_hint or bool(self._events) or S(state.status) is not S.CAPTURED,
                timeout=timedelta(seconds=timings.settlement_poll_interval_seconds),
            )
        except TimeoutError:
            pass

    async def _disburse(self) -> None:
        """Book Stripe's fee, then pay each recipient still unpaid, exactly once, with its own key."""
        state = self._require_state()
        if state.split is None:
            state.fee_booked = True
            return
        if not state.fee_booked:
            await self._book_fee()
        for round_number in range(1, TRANSFER_ROUNDS_MAX + 1):
            for record in state.transfers:
                if record.transfer_id is None:
                    await self._transfer(record)
                elif not record.booked:
                    await self._book_transfer(record)
            if all(record.booked for record in state.transfers):
                return
            if round_number < TRANSFER_ROUNDS_MAX:
                await workflow.sleep(timedelta(seconds=self._timings().processing_poll_interval_seconds))
        unpaid = [record for record in state.transfers if record.transfer_id is None]
        for record in unpaid:
            record.status = TRANSFER_IN_REVIEW
        failure = StepFailed(
            "transfer",
            "TransferFailed",
            f"{len(unpaid)} of {len(state.transfers)} transfers failed after {TRANSFER_ROUNDS_MAX} rounds",
            kind="transfer_failed",
            resume="resolve with `retry`: only the unpaid recipients are paid, each looked up first",
        )
        failure.details = {record.account_id: f"{record.amount} {record.error}"[:200] for record in unpaid}
        raise failure

    async def _book_fee(self) -> None:
        state = self._require_state()
        assert state.split is not None
        fee_booking: list[LedgerAction] = []
        if state.stripe_charge_id:
            balance = await self._stripe(
                "stripe_charge_balance", ChargeBalanceInput(state.stripe_charge_id), ChargeBalance
            )
            state.stripe_fee = balance.fee
            if balance.fee:
                fee_booking = [LedgerAction("processing_fee", amount=balance.fee)]
        parts = core.captured_parts(state.split, state.amount_captured)
        if state.capture_method == "automatic" and len(state.split.parts) == 1:
            # Stripe moved the seller's money with the charge itself: fee and transfer are
            # booked together, in one transaction.
            account, amount = parts[0]
            await self._book(
                "disbursement",
                [
                    *fee_booking,
                    LedgerAction("transfer", amount=amount, account_id=account, reference="destination_charge"),
                ],
                f"Stripe fee {state.stripe_fee}; destination charge pays {account} {amount}",
            )
            state.transfers = [TransferRecord(account, amount, "destination_charge", TRANSFER_SUCCEEDED, 1, "", True)]
        else:
            if fee_booking:
                await self._book("processing_fee", fee_booking, f"Stripe fee {state.stripe_fee}")
            state.transfers = [TransferRecord(account, amount) for account, amount in parts if amount > 0]
        state.fee_booked = True

    async def _transfer(self, record: TransferRecord) -> None:
        state = self._require_state()
        request = self._require_input()

        async def act(key: str) -> TransferResult:
            return await self._stripe(
                "stripe_create_transfer",
                TransferInput(
                    idempotency_key=key,
                    payment_id=state.payment_id,
                    order_id=request.order_id,
                    destination=record.account_id,
                    amount=record.amount,
                    currency=request.currency,
                    transfer_group=request.order_id,
                    source_transaction=state.stripe_charge_id,
                ),
                TransferResult,
            )

        record.attempts += 1
        try:
            result = await self._stripe_post(
                f"transfer:{record.account_id}",
                f"{workflow.info().workflow_id}:transfer:{record.account_id}",
                act,
                lambda: self._find_transfer(record),
                "transfer",
            )
        except StepFailed as failure:
            if failure.kind == "duplicate_transfer":
                raise
            record.status, record.error = TRANSFER_FAILED, failure.message[:200]
            return
        await self._record_transfer(record, result)

    async def _find_transfer(self, record: TransferRecord) -> TransferResult | None:
        state = self._require_state()
        found = await self._stripe(
            "stripe_find_transfer",
            FindTransferInput(
                transfer_group=self._require_input().order_id,
                destination=record.account_id,
                payment_id=state.payment_id,
            ),
            FindTransferResult,
        )
        if found.matches > 1:
            raise StepFailed(
                f"transfer:{record.account_id}",
                "DuplicateTransfer",
                f"{found.matches} transfers to {record.account_id} exist for this payment",
                kind="duplicate_transfer",
                resume="reverse the extra transfer at Stripe, then resolve with `retry`",
            )
        if not found.found or found.transfer_id is None:
            return None
        return TransferResult(found.transfer_id, found.amount, record.account_id)

    async def _record_transfer(self, record: TransferRecord, result: TransferResult) -> None:
        if result.amount != record.amount:
            raise StepFailed(
                f"transfer:{record.account_id}",
                "TransferAmountMismatch",
                f"transfer {result.transfer_id} is {result.amount}, Penny owes {record.amount}",
                kind="transfer_mismatch",
            )
        record.transfer_id, record.status, record.error = result.transfer_id, TRANSFER_SUCCEEDED, ""
        await self._book_transfer(record)

    async def _book_transfer(self, record: TransferRecord) -> None:
        assert record.transfer_id is not None
        await self._book(
            f"transfer:{record.account_id}:{record.transfer_id}",
            [
                LedgerAction(
                    "transfer", amount=record.amount, account_id=record.account_id, reference=record.transfer_id
                )
            ],
            f"transfer {record.transfer_id} to {record.account_id}",
        )
        record.booked = True

    # ----------------------------------------------------------------- Stripe events (webhooks)

    async def _drain_events(self) -> None:
        while self._events:
            event = self._events.pop(0)
            # Marked before handling: a duplicate signal arriving while this one is handled (its
            # activities run) would otherwise be queued and handled a second time.
            state = self._require_state()
            state.processed_event_ids.append(event.event_id)
            del state.processed_event_ids[:-PROCESSED_EVENT_IDS_MAX]
            async with self._lock:
                try:
                    await self._handle_event(event)
                except StepFailed as failure:
                    await self._review_failure(failure, stripe_event_id=event.event_id)

    async def _handle_event(self, event: StripeEventSignal) -> None:
        state = self._require_state()
        kind = event.type
        if kind.startswith("payment_intent."):
            await self._handle_intent_event(event)
        elif kind in ("balance.available", "payout.paid", "payout.reconciliation_completed"):
            state.settlement_hint = True
        elif kind.startswith("transfer."):
            await self._handle_transfer_event(event)
        elif kind == "charge.dispute.created":
            if not await self._transition(
                E.DISPUTE_OPENED,
                actor="stripe-webhook",
                reason=kind,
                stripe_event_id=event.event_id,
                from_processor=True,
            ):
                await self._ignore(event, f"dispute opened while {state.status}")
        elif kind == "charge.dispute.closed":
            won = event.status == "won"
            if not await self._transition(
                E.DISPUTE_WON if won else E.DISPUTE_LOST,
                actor="stripe-webhook",
                reason=f"dispute {event.status}",
                stripe_event_id=event.event_id,
                from_processor=True,
            ):
                await self._ignore(event, f"dispute closed while {state.status}")
        else:
            await self._ignore(event, f"{kind} needs no action from the payment workflow")

    async def _handle_intent_event(self, event: StripeEventSignal) -> None:
        state = self._require_state()
        if state.stripe_payment_intent_id is not None and event.object_id != state.stripe_payment_intent_id:
            other = await self._stripe("stripe_retrieve_payment_intent", event.object_id, IntentSnapshot)
            if other.status in CHARGED_STATUSES and (state.stripe_status in CHARGED_STATUSES):
                raise StepFailed(
                    "webhook",
                    "DuplicateCharge",
                    f"PaymentIntents {state.stripe_payment_intent_id} and {other.id} of this order both moved money",
                    kind="duplicate_charge",
                    resume="refund the extra PaymentIntent at Stripe, then resolve with `retry`",
                )
            await self._ignore(event, f"event for another PaymentIntent {event.object_id} ({other.status})")
            return
        current = S(state.status)
        claimed = core.INTENT_STATUS_EVENTS.get(event.status or "")
        if (
            claimed is not None
            and current not in core.PRE_CAPTURE
            and current not in (S.NEEDS_REVIEW, S.FAILED, S.CANCELED)
            and not decide(current, claimed, from_processor=True).allowed
        ):
            # Even if Stripe's truth were further along, this event cannot move the payment:
            # no need to ask Stripe (FAILED/CANCELED still ask, to catch contradictions).
            await self._ignore(event, f"stale: payment already {current} (event says {event.status})")
            return
        # The event's object may be stale: re-retrieve the PaymentIntent before acting.
        intent = await self._stripe("stripe_retrieve_payment_intent", event.object_id, IntentSnapshot)
        if current in (S.FAILED, S.CANCELED) and intent.status in CHARGED_STATUSES:
            state.stripe_status = intent.status
            raise StepFailed(
                "webhook",
                "Contradiction",
                f"Stripe reports {intent.status} for a payment Penny marked {current}",
                kind="contradiction",
                resume="refund or cancel at Stripe, then resolve",
            )
        if not await self._apply_intent(
            intent, actor="stripe-webhook", reason=event.type, stripe_event_id=event.event_id
        ):
            await self._ignore(event, f"stale: payment already {state.status} (Stripe says {intent.status})")

    async def _handle_transfer_event(self, event: StripeEventSignal) -> None:
        """A transfer Stripe reports: if it pays a recipient Penny has not recorded, record and book it."""
        state = self._require_state()
        unpaid = [record for record in state.transfers if record.transfer_id is None]
        if not unpaid or S(state.status) not in (S.CAPTURED, S.NEEDS_REVIEW):
            await self._ignore(event, "every transfer of this payment is recorded")
            return
        recorded = 0
        for record in unpaid:
            found = await self._find_transfer(record)
            if found is not None:
                await self._record_transfer(record, found)
                recorded += 1
        if recorded == 0:
            await self._ignore(event, f"transfer {event.object_id} pays no unpaid recipient of this payment")

    async def _ignore(self, event: StripeEventSignal, reason: str) -> None:
        state = self._require_state()
        self._note(f"ignored {event.type} ({event.event_id}): {reason}")
        await self._db(
            "record_ignored_event",
            RecordIgnoredInput(
                record_id=f"{state.payment_id}:ignored:{event.event_id}",
                payment_id=state.payment_id,
                status=state.status,
                event=event.type,
                reason=reason,
                stripe_event_id=event.event_id,
            ),
            bool,
        )

    # ----------------------------------------------------------------- transitions

    async def _transition(
        self,
        event: PaymentEvent,
        *,
        actor: str = "workflow",
        reason: str = "",
        ledger: list[LedgerAction] | None = None,
        row: PaymentRowUpdate | None = None,
        review: ReviewSpec | None = None,
        stripe_event_id: str | None = None,
        request_id: str | None = None,
        from_processor: bool = False,
        resolution: ReviewResolution | None = None,
        force: bool = False,
    ) -> bool:
        state = self._require_state()
        decision = decide(state.status, event, from_processor=from_processor)
        if not decision.allowed or decision.to_status is None:
            if not from_processor:  # processor events that change nothing are recorded as ignored by the caller
                self._note(f"refused {event}: {decision.reason}")
            return False
        if state.status == S.NEEDS_REVIEW and resolution is None:
            # Stripe's own answer moved the payment out of review: that resolves the items.
            resolution = ReviewResolution(actor=actor, resolution=str(event), note=reason)
        result = await self._db(
            "apply_transition",
            TransitionInput(
                transition_id=f"{state.payment_id}:{state.transition_count + 1}:{event}",
                payment_id=state.payment_id,
                expected_status=state.status,
                to_status=decision.to_status,
                event=str(event),
                actor=actor,
                reason=reason,
                stripe_event_id=stripe_event_id,
                request_id=request_id,
                ledger=ledger or [],
                row=row or PaymentRowUpdate(),
                review=review,
                resolution=resolution,
                force=force,
            ),
            TransitionResult,
        )
        state.transition_count += 1
        state.status = result.status
        if result.status == S.NEEDS_REVIEW:
            state.review_reason = reason
        self._note(f"{decision.from_status} -> {result.status} ({event}; {reason})")
        self._upsert_search_attributes()
        return True

    async def _book(
        self, step: str, ledger: list[LedgerAction], reason: str, *, review: ReviewSpec | None = None
    ) -> None:
        """A ledger write (or an extra review item) that keeps the status: same atomic activity, no outbox event."""
        state = self._require_state()
        await self._db(
            "apply_transition",
            TransitionInput(
                transition_id=f"{state.payment_id}:book:{step}",
                payment_id=state.payment_id,
                expected_status=state.status,
                to_status=state.status,
                event=f"book:{step.split(':')[0]}",
                reason=reason,
                ledger=ledger,
                review=review,
            ),
            TransitionResult,
        )
        self._note(reason)

    # ----------------------------------------------------------------- helpers

    def _timings(self) -> PaymentTimings:
        return self._require_input().timings

    def _require_state(self) -> PaymentState:
        if self._state is None:
            raise ApplicationError("payment not started yet", type="NotReady")
        return self._state

    def _require_input(self) -> PaymentInput:
        assert self._input is not None
        return self._input

    def _note(self, line: str) -> None:
        state = self._require_state()
        state.history.append(f"{workflow.now().isoformat(timespec='seconds')} {line}")
        del state.history[:-HISTORY_LINES_MAX]

    def _upsert_search_attributes(self) -> None:
        state = self._require_state()
        workflow.upsert_search_attributes(
            [
                attributes.PAYMENT_STATUS.value_set(str(state.status)),
                attributes.ORDER_ID.value_set(state.order_id),
                attributes.AMOUNT.value_set(state.amount),
                attributes.CURRENCY.value_set(state.currency),
                attributes.CUSTOMER_ID.value_set(state.customer),
            ]
        )
