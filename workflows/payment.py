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

from dataclasses import replace
from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.payment_types import (
        INVALID_PAYMENT_REQUEST,
        PaymentRowUpdate,
        PreparePaymentInput,
        PreparePaymentResult,
        ReviewResolution,
        RiskCheckInput,
        RiskCheckResult,
    )

from workflows import payment_core as core
from workflows.ids import payment_id_from_uuid
from workflows.payment_events import EventSteps
from workflows.payment_legacy import LegacyPaymentWorkflow
from workflows.payment_models import (
    PAYMENT_WORKFLOW_NAME,
    QUERY_STATE,
    RESOLUTIONS,
    SIGNAL_STRIPE_EVENT,
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
    StripeEventSignal,
)
from workflows.payment_shell import (
    FIRST_MILESTONE_WAIT_SECONDS_DEFAULT,
    FIRST_MILESTONE_WAIT_SECONDS_MAX,
    PATCH_FAULT_PATHS,
    PATCH_PREPARE_SCREENS,
    PATCH_UNCLAIMED_INTENT_EVENTS,
    PREPARE_ROUNDS_MAX,
    E,
    S,
    StepFailed,
)
from workflows.state_machine import FIRST_MILESTONES, TERMINAL_STATES, PaymentStatus


@workflow.defn(name=PAYMENT_WORKFLOW_NAME)
class PaymentWorkflow(EventSteps):
    def __init__(self) -> None:
        super().__init__()
        # Decided once per execution: histories recorded before the patch replay the old code.
        self._legacy = None if workflow.patched(PATCH_FAULT_PATHS) else LegacyPaymentWorkflow()

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

    @workflow.update(name=UPDATE_REFUND)
    async def refund(self, request: RefundRequest) -> RefundRecord:
        """A refund (all that remains, or `amount`): made at Stripe once and booked; the same
        refund id again returns the refund it made."""
        if self._legacy is not None:
            raise ApplicationError("this payment predates refunds; refund it at Stripe", type="InvalidTransition")
        async with self._lock:
            existing = self._find_refund(request.refund_id)
            if existing is not None:
                return existing
            self._validate_refund(request)  # re-checked under the lock: a concurrent refund may have taken it
            return await self._refund_requested(request)

    @refund.validator
    def _validate_refund_update(self, request: RefundRequest) -> None:
        if self._legacy is not None:
            raise ApplicationError("this payment predates refunds; refund it at Stripe", type="InvalidTransition")
        self._validate_refund(request)

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
        self._skip_lookup_of_unclaimed_intent_events = workflow.patched(PATCH_UNCLAIMED_INTENT_EVENTS)
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
        # Histories from before the patch ran the risk check as its own local activity.
        screened = workflow.patched(PATCH_PREPARE_SCREENS)
        prepared = await self._prepare(request, payment_id, screen=screened)
        if prepared is None:
            return
        self._state.split = prepared.split
        async with self._lock:
            risk = prepared.risk
            if risk is None:
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

    async def _prepare(self, request: PaymentInput, payment_id: str, *, screen: bool) -> PreparePaymentResult | None:
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
                        payment_method=request.payment_method if screen else None,
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
        if status in core.MONEY_MOVED_STATES and self._disbursement_pending():
            # Captured money is disbursed whatever came after the capture (a dispute, even one
            # lost at once): the recipients were owed at capture, a destination charge has paid
            # its seller at Stripe already, and the platform bears a lost dispute (booked apart).
            wait_seconds = self._transfer_wait_seconds()
            if wait_seconds > 0:
                await self._wait_for_change(status, wait_seconds)
                return True
            async with self._lock:
                if S(state.status) is status:
                    await self._disburse()
            return True
        if status is not S.NEEDS_REVIEW and self._refund_work_pending():
            # A refund's remaining steps (its Stripe refund after a review, its booking, the
            # recipients' reversals) run before anything else, whatever the status.
            async with self._lock:
                if S(state.status) is status:
                    await self._advance_refunds()
            return True
        if status is not S.NEEDS_REVIEW and self._dispute_recovery_pending():
            async with self._lock:
                if S(state.status) is status:
                    await self._advance_dispute_recoveries()
            return True
        if status is not S.NEEDS_REVIEW and self._refund_awaiting_stripe():
            # Stripe has not confirmed a refund yet: its event, or a poll after the interval.
            if not await self._wait_for_change(status, timings.processing_poll_interval_seconds):
                async with self._lock:
                    await self._poll_refunds()
            return True
        if status in TERMINAL_STATES and status is not S.REFUNDED:
            # REFUNDED waits out the dispute window like SETTLED: Stripe may still fail a refund.
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
            # SETTLED, DISPUTED, PARTIALLY_REFUNDED, REFUNDED: open for disputes and refund
            # failures until the window ends.
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
