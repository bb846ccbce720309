"""The payment workflow's shell: the one guard every activity call goes through, and transitions.

`PaymentShell` holds the workflow's state and knows retries, caps and what goes to review:
- `_db` / `_stripe` run an activity under its named retry policy and turn whatever outlasts
  it (or is final: a decline, a refusal, a ledger rejection, a state conflict) into
  `StepFailed`;
- `_stripe_post` is a Stripe POST that is looked up before it is ever sent again, with one
  idempotency key per distinct request;
- `_guarded` catches `StepFailed` and moves the payment to NEEDS_REVIEW with a review item
  naming the step, the error, the Stripe ids and how to resume;
- `_transition` asks the state machine, then applies the change with ONE activity (row CAS +
  audit + ledger + one outbox event + review item, one Postgres transaction).

Deterministic: no I/O, clocks or randomness except through `workflow.*`.
"""

import asyncio
from collections.abc import Awaitable, Callable
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
        RecordIgnoredInput,
        ReviewResolution,
        ReviewSpec,
        TransitionInput,
        TransitionResult,
    )
    from activities.stripe_types import (
        CARD_DECLINED,
        STRIPE_REQUEST_REFUSED,
    )

from workflows import payment_core as core
from workflows import search_attributes as attributes
from workflows.payment_models import (
    PaymentInput,
    PaymentState,
    PaymentTimings,
    RefundRecord,
    StripeEventSignal,
    StripeStep,
)
from workflows.state_machine import PaymentEvent, PaymentStatus, decide

S = PaymentStatus
E = PaymentEvent
ResultT = TypeVar("ResultT")


PATCH_FAULT_PATHS = "fault-paths-v2"
# Refund events handled (before: recorded as ignored); dispute status recorded and searchable.
PATCH_REFUNDS = "refunds-v1"
# The risk check runs inside prepare_payment's transaction (one local activity fewer; #16).
PATCH_PREPARE_SCREENS = "prepare-screens-v1"
# The create and capture requests expand the charge's balance transaction, and the fee it
# reports is booked without a stripe_charge_balance activity (one activity and one Stripe call
# fewer per payment; #16).
PATCH_FEE_FROM_INTENT = "fee-from-intent-v1"
# A PaymentIntent event that claims no status Penny knows (payment_intent.created says
# requires_confirmation) about the payment's own intent, once the payment is past its charge,
# is recorded as ignored without looking the intent up: one Stripe call, one activity and one
# workflow task fewer per payment through the API (#16). Asked once per run, at its start, so
# the patch's marker (and the search attribute the SDK upserts with it) lands in the first
# workflow task, not in a later one.
PATCH_UNCLAIMED_INTENT_EVENTS = "unclaimed-intent-events-v1"
DATABASE_ACTIVITY_TIMEOUT = timedelta(seconds=30)
FIRST_MILESTONE_WAIT_SECONDS_DEFAULT = 20
FIRST_MILESTONE_WAIT_SECONDS_MAX = 60
PROCESSED_EVENT_IDS_MAX = 500
HISTORY_LINES_MAX = 200
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
# Inquiries (warning_*) withdraw no funds: nothing to book until they become a dispute.
WARNING_STATUSES = ("warning_needs_response", "warning_under_review", "warning_closed")


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


class PaymentShell:
    """State, the guard and transitions; the step mixins and PaymentWorkflow build on it."""

    def __init__(self) -> None:
        self._state: PaymentState | None = None
        self._input: PaymentInput | None = None
        self._lock = asyncio.Lock()
        self._events: list[StripeEventSignal] = []
        self._duplicate_intents: list[str] = []
        # Set at the start of each run (patch unclaimed-intent-events-v1).
        self._skip_lookup_of_unclaimed_intent_events = False

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
        refund: RefundRecord | None = None,
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
                refund=refund,
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
        self,
        step: str,
        ledger: list[LedgerAction],
        reason: str,
        *,
        review: ReviewSpec | None = None,
        refund: RefundRecord | None = None,
        row: PaymentRowUpdate | None = None,
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
                refund=refund,
                row=row or PaymentRowUpdate(),
            ),
            TransitionResult,
        )
        self._note(reason)

    async def _ignore(self, event: StripeEventSignal, reason: str) -> None:
        """Record an event that changed nothing, with the reason (invariant 5: applied or recorded)."""
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
                *([attributes.DISPUTE_STATUS.value_set(state.dispute_status)] if state.dispute_status else []),
            ]
        )
