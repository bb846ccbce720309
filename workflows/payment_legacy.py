"""FROZEN: the payment workflow as released before the fault-paths rework (patch `fault-paths-v2`).

Payments started by earlier workers replay their history through this code, so it must keep
issuing exactly the commands it issued then: do not change its behaviour. `PaymentWorkflow`
(workflows/payment.py) asks `workflow.patched(PATCH_FAULT_PATHS)` once, in `__init__`: new
executions take the new path, executions recorded without the marker run this class. Delete it
(and turn the check into `workflow.deprecate_patch`) once no pre-patch payment is open, i.e.
one dispute window (120 days by default) after the rollout.

Original description follows.
PaymentWorkflow: one durable workflow per order (id `payment-<order_id>`).

Path: prepare (exact split, payments row) → risk check → create + confirm the PaymentIntent
(idempotency key `<workflow id>:create`) → AUTHORIZED (manual capture) or CAPTURED → Stripe
fee booked → transfers to recipients (`<workflow id>:transfer:<account>`) → SETTLED when
Stripe makes the funds available → open for disputes until the dispute window ends.

Every status change goes through `_transition`, which asks the state machine first and then
runs the `apply_transition` activity (ONE Postgres transaction: row CAS + audit + ledger +
outbox). A refused event is recorded as ignored, with the reason.

Uncertainty: a Stripe call whose retries run out without an answer moves the payment to
PROCESSING; the workflow then looks the PaymentIntent up by our order id (metadata) before
deciding anything, retries the create with the same key, and after `uncertain_rounds_max`
rounds moves the payment to NEEDS_REVIEW with a review item saying what is known. It never
fails a payment silently.

Deterministic: no I/O, clocks or randomness except through `workflow.*`.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import datetime, timedelta
from typing import TypeVar

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.payment_types import (
        INVALID_PAYMENT_REQUEST,
        LedgerAction,
        PaymentRowUpdate,
        PreparePaymentInput,
        PreparePaymentResult,
        RecordIgnoredInput,
        ReviewSpec,
        RiskCheckInput,
        RiskCheckResult,
        TransitionInput,
        TransitionResult,
    )
    from activities.stripe_types import (
        CARD_DECLINED,
        ChargeBalance,
        ChargeBalanceInput,
        CreateIntentInput,
        FindIntentInput,
        FindIntentResult,
        IntentActionInput,
        IntentSnapshot,
        TransferInput,
        TransferResult,
    )

from workflows import search_attributes as attributes
from workflows.payment_models import (
    CancelRequest,
    CaptureRequest,
    PaymentInput,
    PaymentState,
    PaymentTimings,
    ResolveReviewRequest,
    StripeEventSignal,
    TransferRecord,
)
from workflows.state_machine import FIRST_MILESTONES, TERMINAL_STATES, PaymentEvent, PaymentStatus, decide

S = PaymentStatus
E = PaymentEvent
ResultT = TypeVar("ResultT")

DATABASE_ACTIVITY_TIMEOUT = timedelta(seconds=30)
# Database activities (prepare, risk check, transitions) run as LOCAL activities: each is one
# short Postgres transaction, idempotent by its key (order id, transition id), so a retry
# after a worker crash is safe, and skipping the task-queue round trip roughly halves the
# Temporal work per payment (bench/payments.py). They retry until the database is back
# (bounded interval, unbounded attempts): a transition that cannot be written is never dropped.
DATABASE_RETRY = RetryPolicy(initial_interval=timedelta(milliseconds=200), maximum_interval=timedelta(seconds=30))
FIRST_MILESTONE_WAIT_SECONDS_DEFAULT = 20
PROCESSED_EVENT_IDS_MAX = 500
HISTORY_LINES_MAX = 200
TRANSFER_ROUNDS_MAX = 3

PRE_CAPTURE = frozenset({S.CREATED, S.REQUIRES_PAYMENT_METHOD, S.REQUIRES_ACTION, S.PROCESSING})
# What a PaymentIntent status in an event claims (for recognising stale events cheaply).
INTENT_STATUS_EVENTS: dict[str, PaymentEvent] = {
    "succeeded": E.CAPTURED,
    "requires_capture": E.AUTHORIZED,
    "requires_action": E.ACTION_REQUIRED,
    "processing": E.PROCESSING,
    "requires_payment_method": E.PAYMENT_METHOD_REQUIRED,
    "canceled": E.CANCELED,
}


def stripe_retry(timings: PaymentTimings) -> RetryPolicy:
    """Retries for one Stripe call with one idempotency key.

    The cap (attempts x maximum interval plus timeouts) ends within minutes, far inside
    Stripe's 24 h idempotency window, so a retry can never turn into a second charge.
    """
    return RetryPolicy(
        initial_interval=timedelta(seconds=timings.stripe_initial_interval_seconds),
        backoff_coefficient=2.0,
        maximum_interval=timedelta(seconds=timings.stripe_maximum_interval_seconds),
        maximum_attempts=timings.stripe_attempts_max,
        non_retryable_error_types=[CARD_DECLINED, "StripeRequestRefused", INVALID_PAYMENT_REQUEST],
    )


def _application_error(error: BaseException) -> ApplicationError | None:
    cause = error.cause if isinstance(error, ActivityError) else error
    return cause if isinstance(cause, ApplicationError) else None


class LegacyPaymentWorkflow:
    def __init__(self) -> None:
        self._state: PaymentState | None = None
        self._input: PaymentInput | None = None
        self._lock = asyncio.Lock()
        self._events: list[StripeEventSignal] = []
        self._settlement_hint = False
        self._polls = 0
        self._action_deadline: datetime | None = None
        self._authorization_deadline: datetime | None = None

    # ----------------------------------------------------------------- queries, updates, signals

    def state(self) -> PaymentState | None:
        return self._state

    async def first_milestone(self, max_wait_seconds: int = FIRST_MILESTONE_WAIT_SECONDS_DEFAULT) -> PaymentState:
        """Answer once the payment reaches its first milestone, or after a bounded wait."""
        try:
            await workflow.wait_condition(
                lambda: self._state is not None and S(self._state.status) in FIRST_MILESTONES,
                timeout=timedelta(seconds=max(1, min(max_wait_seconds, 60))),
            )
        except TimeoutError:
            pass
        await workflow.wait_condition(lambda: self._state is not None)
        assert self._state is not None
        return self._state

    async def capture(self, request: CaptureRequest) -> PaymentState:
        async with self._lock:
            state = self._require_state()
            self._validate_capture(request)  # re-checked under the lock: state may have moved
            amount = request.amount if request.amount is not None else state.amount_capturable
            await self._capture(amount, actor="api", request_id=request.request_id)
            return state

    def _validate_capture_update(self, request: CaptureRequest) -> None:
        self._validate_capture(request)

    async def cancel(self, request: CancelRequest) -> PaymentState:
        async with self._lock:
            state = self._require_state()
            self._validate_cancel(request)
            await self._cancel_authorization(reason=request.reason, actor="api", request_id=request.request_id)
            return state

    def _validate_cancel_update(self, request: CancelRequest) -> None:
        self._validate_cancel(request)

    async def resolve_review(self, request: ResolveReviewRequest) -> PaymentState:
        async with self._lock:
            state = self._require_state()
            event = E(f"resolve_{request.resolution}")
            await self._transition(
                event, actor=f"operator:{request.operator or 'unknown'}", reason=request.note or "resolved by operator"
            )
            return state

    def _validate_resolve(self, request: ResolveReviewRequest) -> None:
        state = self._require_state()
        if state.status != S.NEEDS_REVIEW:
            raise ApplicationError(f"payment is {state.status}, not NEEDS_REVIEW", type="InvalidTransition")
        if request.resolution not in {"captured", "authorized", "failed", "canceled", "retry"}:
            raise ApplicationError(f"unknown resolution {request.resolution!r}", type="InvalidRequest")

    def stripe_event(self, event: StripeEventSignal) -> None:
        state = self._state
        if state is not None and event.event_id in state.processed_event_ids:
            return  # a duplicate delivery: applied once already
        if any(queued.event_id == event.event_id for queued in self._events):
            return
        self._events.append(event)

    # ----------------------------------------------------------------- main path

    async def run(self, request: PaymentInput) -> PaymentState:
        self._input = request
        if request.carried_state is not None:
            self._state = request.carried_state
        else:
            await self._start(request)
        await self._live()
        return self._require_state()

    async def _start(self, request: PaymentInput) -> None:
        payment_id = f"pay_{workflow.uuid4().hex[:24]}"
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
        try:
            prepared: PreparePaymentResult = await workflow.execute_local_activity(
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
                result_type=PreparePaymentResult,
                start_to_close_timeout=DATABASE_ACTIVITY_TIMEOUT,
                retry_policy=replace(DATABASE_RETRY, non_retryable_error_types=[INVALID_PAYMENT_REQUEST]),
            )
        except ActivityError as error:
            cause = _application_error(error)
            # Invalid before anything was written: nothing to undo, the payment simply fails.
            self._state.status = S.FAILED
            self._state.failure_code = "invalid_request"
            self._state.failure_message = cause.message if cause else str(error)
            self._note(f"invalid request: {self._state.failure_message}")
            self._upsert_search_attributes()
            return
        self._state.split = prepared.split

        async with self._lock:
            risk: RiskCheckResult = await workflow.execute_local_activity(
                "risk_check",
                RiskCheckInput(
                    payment_id=payment_id,
                    customer=request.customer,
                    amount=request.amount,
                    currency=request.currency,
                    payment_method=request.payment_method,
                ),
                result_type=RiskCheckResult,
                start_to_close_timeout=DATABASE_ACTIVITY_TIMEOUT,
                retry_policy=DATABASE_RETRY,
            )
            if risk.outcome == "block":
                self._state.failure_code = "risk_blocked"
                self._state.failure_message = risk.reason
                await self._transition(
                    E.RISK_BLOCKED,
                    reason=risk.reason,
                    row=PaymentRowUpdate(failure_code="risk_blocked", failure_message=risk.reason),
                )
                return
            if risk.outcome == "review":
                await self._review("risk_review", f"risk check: {risk.reason}", {"outcome": risk.outcome})
            else:
                await self._transition(E.RISK_ALLOWED, reason=risk.reason)

        if self._require_state().status == S.NEEDS_REVIEW:
            # An operator decides: resolve_retry continues to the charge, anything else ends here.
            await workflow.wait_condition(lambda: self._require_state().status != S.NEEDS_REVIEW)
            if self._require_state().status != S.PROCESSING:
                return
        async with self._lock:
            await self._charge()

    async def _live(self) -> None:
        """Drive the payment after the charge until it is terminal or its dispute window ends."""
        timings = self._timings()
        while True:
            await self._drain_events()
            state = self._require_state()
            status = S(state.status)
            if status in TERMINAL_STATES:
                return
            if status is S.NEEDS_REVIEW:
                await self._wait_for_change(status, None)
            elif status is S.REQUIRES_ACTION:
                # The customer completes the action (webhook or poll) or the wait runs out.
                if self._action_deadline is None:
                    self._action_deadline = workflow.now() + timedelta(seconds=timings.requires_action_timeout_seconds)
                changed = await self._wait_for_change(status, timings.processing_poll_interval_seconds)
                if not changed:
                    expired = workflow.now() >= self._action_deadline
                    async with self._lock:
                        await self._refresh_intent(abandon_reason="requires_action timed out" if expired else None)
            elif status is S.PROCESSING or status is S.CREATED:
                changed = await self._wait_for_change(status, timings.processing_poll_interval_seconds)
                if not changed:
                    async with self._lock:
                        await self._refresh_intent(abandon_reason=None)
            elif status is S.AUTHORIZED:
                # The hold expires a fixed time after authorisation, however many events arrive.
                if self._authorization_deadline is None:
                    self._authorization_deadline = workflow.now() + timedelta(
                        seconds=timings.authorization_expiry_seconds
                    )
                remaining = (self._authorization_deadline - workflow.now()).total_seconds()
                changed = remaining > 0 and await self._wait_for_change(status, max(1, int(remaining)))
                if not changed:
                    async with self._lock:
                        if S(self._require_state().status) is S.AUTHORIZED:
                            await self._cancel_authorization(reason="authorization expired", actor="timer")
            elif status is S.CAPTURED:
                async with self._lock:
                    await self._disburse()
                await self._await_settlement()
            else:
                # SETTLED, DISPUTED, PARTIALLY_REFUNDED: open for disputes until the window ends.
                if not await self._hold_open(timings.dispute_window_seconds):
                    return
            if workflow.info().is_continue_as_new_suggested():
                await self._continue_as_new()

    async def _wait_for_change(self, status: PaymentStatus, timeout_seconds: int | None) -> bool:
        try:
            await workflow.wait_condition(
                lambda: bool(self._events) or S(self._require_state().status) is not status,
                timeout=timedelta(seconds=timeout_seconds) if timeout_seconds is not None else None,
            )
        except TimeoutError:
            return False
        await self._drain_events()
        return True

    async def _hold_open(self, window_seconds: int) -> bool:
        """Wait for disputes (or other late events) until the window closes. False when it closed."""
        deadline = workflow.now() + timedelta(seconds=window_seconds)
        status = S(self._require_state().status)
        while workflow.now() < deadline:
            remaining = (deadline - workflow.now()).total_seconds()
            changed = await self._wait_for_change(status, max(1, int(remaining)))
            if not changed:
                break
            if S(self._require_state().status) is not status:
                return True
            if workflow.info().is_continue_as_new_suggested():
                await self._continue_as_new()
        self._note("dispute window closed")
        return False

    async def _continue_as_new(self) -> None:
        await workflow.wait_condition(workflow.all_handlers_finished)
        # Queued Stripe events are not carried over: handle them first, or they would be lost
        # (the webhook inbox has already marked them delivered).
        await self._drain_events()
        request = self._require_input()
        workflow.continue_as_new(replace(request, carried_state=self._state))

    # ----------------------------------------------------------------- charge

    async def _charge(self) -> None:
        request = self._require_input()
        state = self._require_state()
        single_destination = (
            request.capture_method == "automatic" and state.split is not None and len(state.split.parts) == 1
        )
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
            destination_account=state.split.parts[0].account_id if single_destination and state.split else None,
            application_fee_amount=(state.split.platform_fee + state.split.tax)
            if single_destination and state.split
            else None,
        )
        for round_number in range(1, self._timings().uncertain_rounds_max + 1):
            try:
                intent = await self._stripe("stripe_create_payment_intent", create, IntentSnapshot)
            except ActivityError as error:
                cause = _application_error(error)
                if cause is not None and cause.type == CARD_DECLINED:
                    await self._declined(cause)
                    return
                if cause is not None and cause.type == "StripeRequestRefused":
                    await self._review("stripe_refused", f"Stripe refused the PaymentIntent: {cause.message}", {})
                    return
                # Outcome unknown: the PaymentIntent may or may not exist. Look before deciding.
                await self._transition(
                    E.PROCESSING, reason=f"create outcome unknown (round {round_number}): {error.cause or error}"
                )
                found = await self._find_intent()
                if found is not None:
                    await self._apply_intent(found, actor="workflow", reason="found by order id after uncertainty")
                    return
                await workflow.sleep(timedelta(seconds=self._timings().processing_poll_interval_seconds))
                continue
            state.stripe_payment_intent_id = intent.id
            await self._apply_intent(intent, actor="workflow", reason="PaymentIntent confirmed")
            return
        await self._review(
            "processor_uncertain",
            "PaymentIntent create outcome unknown after retries; no PaymentIntent found by order id",
            {"idempotency_key": create.idempotency_key, "rounds": str(self._timings().uncertain_rounds_max)},
        )

    async def _find_intent(self) -> IntentSnapshot | None:
        try:
            result = await self._stripe(
                "stripe_find_payment_intent", FindIntentInput(order_id=self._require_input().order_id), FindIntentResult
            )
        except ActivityError:
            return None
        if result.matches > 1:
            self._note(f"ALERT: {result.matches} PaymentIntents carry this order id")
        return result.intent if result.found else None

    async def _declined(self, cause: ApplicationError) -> None:
        details = cause.details[0] if cause.details and isinstance(cause.details[0], dict) else {}
        code = str(details.get("decline_code") or details.get("code") or "card_declined")
        message = str(details.get("message") or cause.message)
        state = self._require_state()
        state.failure_code, state.failure_message = code, message
        await self._transition(
            E.DECLINED,
            reason=f"card declined: {code}",
            row=PaymentRowUpdate(failure_code=code, failure_message=message),
        )

    async def _apply_intent(
        self, intent: IntentSnapshot, *, actor: str, reason: str, stripe_event_id: str | None = None
    ) -> None:
        """Move the payment to what Stripe says the PaymentIntent is (forward only)."""
        state = self._require_state()
        state.stripe_payment_intent_id = intent.id
        state.stripe_status = intent.status
        from_processor = actor != "workflow"
        row = PaymentRowUpdate(stripe_payment_intent_id=intent.id, stripe_charge_id=intent.latest_charge)
        if intent.status == "succeeded":
            state.stripe_charge_id = intent.latest_charge
            ledger = [LedgerAction("capture", amount=intent.amount_received)]
            row.amount_captured, row.amount_capturable = intent.amount_received, 0
            if await self._transition(
                E.CAPTURED,
                actor=actor,
                reason=reason,
                ledger=ledger,
                row=row,
                stripe_event_id=stripe_event_id,
                from_processor=from_processor,
            ):
                state.amount_captured, state.amount_capturable = intent.amount_received, 0
        elif intent.status == "requires_capture":
            state.stripe_charge_id = intent.latest_charge
            row.amount_capturable = intent.amount_capturable
            if await self._transition(
                E.AUTHORIZED,
                actor=actor,
                reason=reason,
                ledger=[LedgerAction("authorization_hold", amount=intent.amount_capturable)],
                row=row,
                stripe_event_id=stripe_event_id,
                from_processor=from_processor,
            ):
                state.amount_capturable = intent.amount_capturable
        elif intent.status == "requires_action":
            state.next_action_url = intent.next_action_url
            await self._transition(
                E.ACTION_REQUIRED,
                actor=actor,
                reason=reason,
                row=row,
                stripe_event_id=stripe_event_id,
                from_processor=from_processor,
            )
        elif intent.status == "processing":
            await self._transition(
                E.PROCESSING, actor=actor, reason=reason, row=row, stripe_event_id=stripe_event_id, from_processor=True
            )
        elif intent.status == "requires_payment_method":
            state.failure_code = intent.failure_code or "payment_failed"
            state.failure_message = intent.failure_message
            row.failure_code, row.failure_message = state.failure_code, intent.failure_message
            await self._transition(
                E.DECLINED,
                actor=actor,
                reason=f"payment failed: {state.failure_code}",
                row=row,
                stripe_event_id=stripe_event_id,
                from_processor=from_processor,
            )
        elif intent.status == "canceled":
            await self._transition(
                E.CANCELED,
                actor=actor,
                reason=reason,
                ledger=[LedgerAction("release_hold")] if state.status == S.AUTHORIZED else [],
                row=row,
                stripe_event_id=stripe_event_id,
                from_processor=from_processor,
            )
        else:
            self._note(f"unknown PaymentIntent status {intent.status}")

    async def _refresh_intent(self, abandon_reason: str | None) -> None:
        """Poll Stripe for a payment waiting on the processor or the customer."""
        state = self._require_state()
        intent: IntentSnapshot | None = None
        if state.stripe_payment_intent_id:
            try:
                intent = await self._stripe(
                    "stripe_retrieve_payment_intent", state.stripe_payment_intent_id, IntentSnapshot
                )
            except ActivityError:
                intent = None
        else:
            intent = await self._find_intent()
        if intent is not None and intent.status not in ("requires_action", "processing"):
            await self._apply_intent(intent, actor="poll", reason="status from Stripe (poll)")
            return
        if abandon_reason is not None and state.stripe_payment_intent_id:
            canceled = await self._stripe(
                "stripe_cancel_payment_intent",
                IntentActionInput(
                    state.stripe_payment_intent_id, f"{workflow.info().workflow_id}:cancel", reason="abandoned"
                ),
                IntentSnapshot,
            )
            await self._apply_intent(canceled, actor="timer", reason=abandon_reason)
            return
        if S(state.status) is not S.PROCESSING:
            return
        self._polls += 1
        if self._polls >= self._timings().processing_polls_max:
            await self._review(
                "processor_uncertain",
                f"still {state.status} after {self._polls} polls",
                {"payment_intent": state.stripe_payment_intent_id or ""},
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

    async def _capture(self, amount: int, *, actor: str, request_id: str) -> None:
        state = self._require_state()
        assert state.stripe_payment_intent_id is not None
        intent = await self._stripe(
            "stripe_capture_payment_intent",
            IntentActionInput(state.stripe_payment_intent_id, f"{workflow.info().workflow_id}:capture", amount=amount),
            IntentSnapshot,
        )
        state.stripe_charge_id = intent.latest_charge
        released = state.amount_capturable - intent.amount_received
        if await self._transition(
            E.CAPTURED,
            actor=actor,
            reason=f"captured {intent.amount_received}" + (f", released {released}" if released else ""),
            request_id=request_id,
            ledger=[LedgerAction("capture", amount=intent.amount_received)],
            row=PaymentRowUpdate(
                amount_captured=intent.amount_received, amount_capturable=0, stripe_charge_id=intent.latest_charge
            ),
        ):
            state.amount_captured, state.amount_capturable = intent.amount_received, 0

    async def _cancel_authorization(self, *, reason: str, actor: str, request_id: str = "") -> None:
        state = self._require_state()
        if state.stripe_payment_intent_id:
            await self._stripe(
                "stripe_cancel_payment_intent",
                IntentActionInput(
                    state.stripe_payment_intent_id,
                    f"{workflow.info().workflow_id}:cancel",
                    reason="requested_by_customer" if actor == "api" else "abandoned",
                ),
                IntentSnapshot,
            )
        if await self._transition(
            E.CANCELED,
            actor=actor,
            reason=reason,
            request_id=request_id or None,
            ledger=[LedgerAction("release_hold")] if state.status == S.AUTHORIZED else [],
            row=PaymentRowUpdate(amount_capturable=0),
        ):
            state.amount_capturable = 0

    # ----------------------------------------------------------------- after capture

    async def _disburse(self) -> None:
        """Book Stripe's fee, then pay each recipient with its own transfer and idempotency key."""
        state = self._require_state()
        if state.split is None or any(record.status == "succeeded" for record in state.transfers):
            return
        fee_booking: list[LedgerAction] = []
        if state.stripe_charge_id:
            balance = await self._stripe(
                "stripe_charge_balance", ChargeBalanceInput(state.stripe_charge_id), ChargeBalance
            )
            state.stripe_fee = balance.fee
            if balance.fee:
                fee_booking = [LedgerAction("processing_fee", amount=balance.fee)]
        parts = self._captured_parts()
        destination_charge = state.capture_method == "automatic" and len(state.split.parts) == 1
        if destination_charge:
            # Stripe moved the seller's money with the charge itself: fee and transfer are
            # booked together, in one transaction.
            account, amount = parts[0]
            state.transfers = [TransferRecord(account, amount, "destination_charge", "succeeded", 1)]
            await self._book(
                "disbursement",
                [
                    *fee_booking,
                    LedgerAction("transfer", amount=amount, account_id=account, reference="destination_charge"),
                ],
                f"Stripe fee {state.stripe_fee}; destination charge pays {account} {amount}",
            )
            return
        if fee_booking:
            await self._book("processing_fee", fee_booking, f"Stripe fee {state.stripe_fee}")
        state.transfers = [TransferRecord(account, amount) for account, amount in parts if amount > 0]
        for _ in range(TRANSFER_ROUNDS_MAX):
            for record in state.transfers:
                if record.status == "succeeded":
                    continue
                await self._transfer(record)
            if all(record.status == "succeeded" for record in state.transfers):
                return
        failed = [record for record in state.transfers if record.status != "succeeded"]
        await self._review(
            "transfer_failed",
            f"{len(failed)} of {len(state.transfers)} transfers failed after retries",
            {record.account_id: f"{record.amount} {record.error}"[:200] for record in failed},
        )

    def _captured_parts(self) -> list[tuple[str, int]]:
        """Recipient amounts for what was actually captured (a partial capture scales the split)."""
        state = self._require_state()
        assert state.split is not None
        parts = [(part.account_id, part.amount) for part in state.split.parts]
        if state.amount_captured == state.split.total:
            return parts
        # Largest-remainder scaling, the same rule as ledger.money.scale_split (kept pure here).
        total = state.split.total
        originals = [state.split.platform_fee, state.split.tax, *[amount for _, amount in parts]]
        exact = [amount * state.amount_captured for amount in originals]
        floors = [value // total for value in exact]
        remainders = sorted(range(len(exact)), key=lambda index: (-(exact[index] % total), index))
        for index in remainders[: state.amount_captured - sum(floors)]:
            floors[index] += 1
        return [(account, floors[2 + index]) for index, (account, _) in enumerate(parts)]

    async def _transfer(self, record: TransferRecord) -> None:
        state = self._require_state()
        request = self._require_input()
        record.attempts += 1
        try:
            result = await self._stripe(
                "stripe_create_transfer",
                TransferInput(
                    idempotency_key=f"{workflow.info().workflow_id}:transfer:{record.account_id}",
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
        except ActivityError as error:
            record.status, record.error = "failed", str(error.cause or error)[:200]
            return
        record.transfer_id, record.status = result.transfer_id, "succeeded"
        await self._book(
            f"transfer:{record.account_id}",
            [
                LedgerAction(
                    "transfer", amount=record.amount, account_id=record.account_id, reference=result.transfer_id
                )
            ],
            f"transfer {result.transfer_id} to {record.account_id}",
        )

    async def _await_settlement(self) -> None:
        """Wait until Stripe makes the funds available (webhook hint or poll), then SETTLED."""
        timings = self._timings()
        deadline = workflow.now() + timedelta(seconds=timings.settlement_timeout_seconds)
        polled = False
        while workflow.now() < deadline:
            state = self._require_state()
            if S(state.status) is not S.CAPTURED:
                return
            # Funds are never available right after the capture: wait (or a webhook hint) first.
            if state.stripe_charge_id and polled:
                self._settlement_hint = False  # consumed by this poll
                async with self._lock:
                    balance = await self._stripe(
                        "stripe_charge_balance", ChargeBalanceInput(state.stripe_charge_id), ChargeBalance
                    )
                    if balance.status == "available" and S(state.status) is S.CAPTURED:
                        # What stays with the platform at Stripe becomes available: the capture
                        # minus Stripe's fee minus what was transferred to recipients.
                        transferred = sum(r.amount for r in state.transfers if r.status == "succeeded")
                        net = state.amount_captured - state.stripe_fee - transferred
                        await self._transition(
                            E.SETTLED,
                            reason=f"funds available ({balance.balance_transaction_id})",
                            ledger=[LedgerAction("settlement", amount=net)] if net > 0 else [],
                        )
                        return
            polled = True
            try:
                await workflow.wait_condition(
                    lambda: self._settlement_hint or bool(self._events),
                    timeout=timedelta(seconds=timings.settlement_poll_interval_seconds),
                )
            except TimeoutError:
                pass
            await self._drain_events()
        await self._review("settlement_overdue", "funds not available within the settlement timeout", {})

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
                await self._handle_event(event)

    async def _handle_event(self, event: StripeEventSignal) -> None:
        state = self._require_state()
        kind = event.type
        if kind.startswith("payment_intent."):
            if event.object_id != state.stripe_payment_intent_id and state.stripe_payment_intent_id is not None:
                await self._ignore(event, f"event for another PaymentIntent {event.object_id}")
                return
            current = S(state.status)
            claimed = INTENT_STATUS_EVENTS.get(event.status or "")
            if (
                claimed is not None
                and current not in PRE_CAPTURE
                and current not in (S.NEEDS_REVIEW, S.FAILED, S.CANCELED)
                and not decide(current, claimed, from_processor=True).allowed
            ):
                # Even if Stripe's truth were further along, this event cannot move the payment:
                # no need to ask Stripe (FAILED/CANCELED still ask, to catch contradictions).
                await self._ignore(event, f"stale: payment already {current} (event says {event.status})")
                return
            # The event's object may be stale: re-retrieve the PaymentIntent before acting.
            intent = await self._stripe("stripe_retrieve_payment_intent", event.object_id, IntentSnapshot)
            if current in (S.FAILED, S.CANCELED) and intent.status in ("succeeded", "requires_capture"):
                await self._review(
                    "contradiction",
                    f"Stripe reports {intent.status} for a payment Penny marked {current}",
                    {"penny_status": current, "stripe_status": intent.status, "event_id": event.event_id},
                    stripe_event_id=event.event_id,
                )
                return
            before = state.transition_count
            await self._apply_intent(intent, actor="stripe-webhook", reason=kind, stripe_event_id=event.event_id)
            if state.transition_count == before:
                await self._ignore(event, f"stale: payment already {state.status} (Stripe says {intent.status})")
        elif kind in ("balance.available", "payout.paid", "payout.reconciliation_completed"):
            self._settlement_hint = True
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

    async def _ignore(self, event: StripeEventSignal, reason: str) -> None:
        state = self._require_state()
        self._note(f"ignored {event.type} ({event.event_id}): {reason}")
        await workflow.execute_local_activity(
            "record_ignored_event",
            RecordIgnoredInput(
                record_id=f"{state.payment_id}:ignored:{event.event_id}",
                payment_id=state.payment_id,
                status=state.status,
                event=event.type,
                reason=reason,
                stripe_event_id=event.event_id,
            ),
            start_to_close_timeout=DATABASE_ACTIVITY_TIMEOUT,
            retry_policy=DATABASE_RETRY,
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
    ) -> bool:
        state = self._require_state()
        decision = decide(state.status, event, from_processor=from_processor)
        if not decision.allowed or decision.to_status is None:
            if not from_processor:  # processor events that change nothing are recorded as ignored by the caller
                self._note(f"refused {event}: {decision.reason}")
            return False
        result: TransitionResult = await workflow.execute_local_activity(
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
            ),
            result_type=TransitionResult,
            start_to_close_timeout=DATABASE_ACTIVITY_TIMEOUT,
            retry_policy=DATABASE_RETRY,
        )
        state.transition_count += 1
        state.status = result.status
        if result.status == S.NEEDS_REVIEW:
            state.review_reason = reason
        self._note(f"{decision.from_status} -> {result.status} ({event}; {reason})")
        self._upsert_search_attributes()
        return True

    async def _book(self, step: str, ledger: list[LedgerAction], reason: str) -> None:
        """A ledger write that does not change the status (fee, transfer): same atomic activity."""
        state = self._require_state()
        await workflow.execute_local_activity(
            "apply_transition",
            TransitionInput(
                transition_id=f"{state.payment_id}:book:{step}",
                payment_id=state.payment_id,
                expected_status=state.status,
                to_status=state.status,
                event=f"book:{step.split(':')[0]}",
                reason=reason,
                ledger=ledger,
            ),
            result_type=TransitionResult,
            start_to_close_timeout=DATABASE_ACTIVITY_TIMEOUT,
            retry_policy=DATABASE_RETRY,
        )
        self._note(reason)

    async def _review(
        self, kind: str, reason: str, details: dict[str, str], *, stripe_event_id: str | None = None
    ) -> None:
        state = self._require_state()
        details = {**details, "status_before": str(state.status)}
        if state.stripe_payment_intent_id:
            details["payment_intent"] = state.stripe_payment_intent_id
        await self._transition(
            E.REVIEW,
            reason=reason,
            review=ReviewSpec(kind=kind, reason=reason, details=details),
            stripe_event_id=stripe_event_id,
        )

    async def _stripe(self, activity_name: str, argument: object, result_type: type[ResultT]) -> ResultT:
        timings = self._timings()
        return await workflow.execute_activity(
            activity_name,
            argument,
            result_type=result_type,
            start_to_close_timeout=timedelta(seconds=timings.stripe_call_timeout_seconds),
            retry_policy=stripe_retry(timings),
        )

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
