"""Charging: create + confirm the PaymentIntent, apply what Stripe says, capture and cancel.

Deterministic workflow code (a mixin of PaymentWorkflow): no I/O outside `workflow.*`.
"""

from dataclasses import replace

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.payment_types import (
        LedgerAction,
        PaymentRowUpdate,
        ReviewResolution,
    )
    from activities.stripe_types import (
        CARD_DECLINED,
        STRIPE_REQUEST_REFUSED,
        CreateIntentInput,
        FindIntentInput,
        FindIntentResult,
        IntentActionInput,
        IntentSnapshot,
    )

from workflows import payment_core as core
from workflows.payment_models import (
    CancelRequest,
    CaptureRequest,
)
from workflows.payment_shell import CHARGED_STATUSES, PATCH_FEE_FROM_INTENT, E, PaymentShell, S, StepFailed


class ChargeSteps(PaymentShell):
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
            expand_fee=workflow.patched(PATCH_FEE_FROM_INTENT),
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
        self._note_charge_fee(intent)
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

    def _note_charge_fee(self, intent: IntentSnapshot) -> None:
        """Keep Stripe's fee when the response carried the charge's balance transaction."""
        if intent.charge_fee is not None and intent.latest_charge:
            state = self._require_state()
            state.stripe_charge_fee, state.stripe_charge_fee_charge_id = intent.charge_fee, intent.latest_charge

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
            expand_fee = workflow.patched(PATCH_FEE_FROM_INTENT)
            action = IntentActionInput(intent_id, key, amount=amount, expand_fee=expand_fee)
            return await self._stripe("stripe_capture_payment_intent", action, IntentSnapshot)

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
        self._note_charge_fee(intent)
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
