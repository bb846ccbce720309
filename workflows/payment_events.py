"""Stripe events (webhooks delivered as signals): re-fetched, applied forward only, or recorded as ignored.

Deterministic workflow code (a mixin of PaymentWorkflow): no I/O outside `workflow.*`.
"""

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.payment_types import LedgerAction, PaymentRowUpdate
    from activities.stripe_types import DisputeSnapshot, IntentSnapshot

from workflows import payment_core as core
from workflows.payment_models import (
    REFUND_EVENT_TYPES,
    SETTLEMENT_HINT_EVENT_TYPES,
    StripeEventSignal,
)
from workflows.payment_refunds import RefundSteps
from workflows.payment_shell import (
    CHARGED_STATUSES,
    PATCH_REFUNDS,
    PROCESSED_EVENT_IDS_MAX,
    WARNING_STATUSES,
    E,
    S,
    StepFailed,
)

# REFUND_EVENT_TYPES: events about one refund (their object is the refund): re-fetched and acted on.


class EventSteps(RefundSteps):
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
        # Keep in step with payment_workflow_acts_on (the webhook router's filter).
        if kind.startswith("payment_intent."):
            await self._handle_intent_event(event)
        elif kind in SETTLEMENT_HINT_EVENT_TYPES:
            state.settlement_hint = True
        elif kind.startswith("transfer."):
            await self._handle_transfer_event(event)
        elif kind.startswith("charge.dispute."):
            await self._handle_dispute_event(event)
        elif kind in REFUND_EVENT_TYPES and event.object_type == "refund" and workflow.patched(PATCH_REFUNDS):
            await self._handle_refund_event(event)
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
        # Even if Stripe's truth were further along, a stale event cannot move the payment: no
        # need to ask Stripe. An event claiming no status (payment_intent.created) after the
        # charge is stale too, since patch unclaimed-intent-events-v1.
        stale = core.stale_intent_event(
            current,
            event.status,
            unclaimed_too=self._skip_lookup_of_unclaimed_intent_events
            and event.object_id == state.stripe_payment_intent_id,
        )
        if stale is not None:
            await self._ignore(event, stale)
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

    async def _handle_dispute_event(self, event: StripeEventSignal) -> None:
        """Book what Stripe says the dispute is now (re-fetched), once per stage, whatever the order of events.

        The money moved at Stripe whatever Penny's status: the ledger books it always; the status
        follows when the state machine allows (DISPUTED on opening; SETTLED or REVERSED on closing).
        """
        state = self._require_state()
        dispute = await self._stripe("stripe_retrieve_dispute", event.object_id, DisputeSnapshot)
        booked = state.disputes.get(dispute.id)
        status_changed = False
        if workflow.patched(PATCH_REFUNDS):
            status_changed = state.dispute_status != dispute.status
            state.dispute_status = dispute.status
            if status_changed:
                self._upsert_search_attributes()
        row = PaymentRowUpdate(dispute_status=dispute.status)
        ledger: list[LedgerAction] = []
        if booked is None and dispute.status not in WARNING_STATUSES:
            ledger.append(LedgerAction("dispute_opened", amount=dispute.amount, reference=dispute.id, fee=dispute.fee))
        closed = dispute.status in ("won", "lost") and booked not in ("won", "lost")
        if closed:
            ledger.append(LedgerAction(f"dispute_{dispute.status}", amount=dispute.amount, reference=dispute.id))
        if not ledger:
            if status_changed:
                # An inquiry (warning_*) or a stage that moves no money: only its status is recorded.
                await self._book(
                    f"dispute:{dispute.id}:{dispute.status}", [], f"dispute {dispute.id} is {dispute.status}", row=row
                )
            await self._ignore(event, f"dispute {dispute.id} is {dispute.status}; nothing new to book")
            return
        reason = f"dispute {dispute.id} {dispute.status} ({event.type})"
        events = []
        if booked is None:
            events.append(E.DISPUTE_OPENED)
        if closed:
            events.append(E.DISPUTE_WON if dispute.status == "won" else E.DISPUTE_LOST)
        moved = False
        for happening in events:
            # The first legal transition carries the whole booking; a later one carries none.
            if await self._transition(
                happening,
                actor="stripe-webhook",
                reason=reason,
                ledger=[] if moved else ledger,
                stripe_event_id=event.event_id,
                from_processor=True,
                row=row,
            ):
                moved = True
        if not moved:
            # The status cannot follow (e.g. the payment is in review): the money is booked anyway.
            await self._book(f"dispute:{dispute.id}:{dispute.status}", ledger, reason, row=row)
        state.disputes[dispute.id] = dispute.status if closed else "opened"
        if closed and dispute.status == "lost":
            self._plan_dispute_recovery(dispute.id, dispute.amount)

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
