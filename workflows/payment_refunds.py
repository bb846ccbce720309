"""Refunds: accepted by a validated update, made at Stripe once, booked exactly, recovered per recipient.

A refund's life (each step durable in its RefundRecord, so a crash, a review or
continue-as-new resumes it where it stopped):
1. `refund` update: validated (refundable status, nothing still being disbursed, amount within
   what remains, no dispute), its exact parts computed by the refund policy
   (workflows/payment_core.refund_parts), recorded;
2. the Stripe refund, one POST with key `<workflow id>:refund:<refund id>`, looked up by
   Penny's refund id in its metadata before it is ever sent again (`_stripe_post`);
3. booked: the refund entry (fee and tax back, the recipients' shares recoverable) with the
   transition to PARTIALLY_REFUNDED or REFUNDED, in one transaction;
4. recovery: one transfer reversal per recipient (key `<workflow id>:refund:<refund id>:reversal:<account>`,
   looked up before it is sent again), each booked as it lands;
5. Stripe's word on the refund (re-fetched on every refund event) decides: succeeded, or failed
   (`refund_failed` books the money back, the recipients already pulled back are owed again,
   and the payment goes to review).

Deterministic workflow code (a mixin of PaymentWorkflow): no I/O outside `workflow.*`.
"""

from temporalio import workflow
from temporalio.exceptions import ApplicationError

with workflow.unsafe.imports_passed_through():
    from activities.payment_types import LedgerAction, PaymentRowUpdate, ReviewSpec
    from activities.stripe_types import (
        FindRefundInput,
        FindRefundResult,
        FindReversalInput,
        FindReversalResult,
        RefundInput,
        RefundSnapshot,
        ReversalInput,
        ReversalResult,
    )

from workflows import payment_core as core
from workflows.payment_disbursement import DisbursementSteps
from workflows.payment_models import (
    REFUND_FAILED,
    REFUND_PENDING,
    REFUND_REASONS,
    REFUND_SUCCEEDED,
    ComputedSplit,
    DisputeRecovery,
    RefundRecord,
    RefundRecovery,
    RefundRequest,
    StripeEventSignal,
)
from workflows.payment_shell import E, S, StepFailed

# Refund ids are `rf_` + 24 lowercase letters (the API derives them from the Idempotency-Key).
REFUND_ID_PREFIX = "rf_"
REFUND_ID_BODY_LENGTH = 24
# Stripe statuses of a refund that has not failed (the money left our balance).
REFUND_ACCEPTED_STATUSES = ("pending", "requires_action", "succeeded")


class RefundSteps(DisbursementSteps):
    # ----------------------------------------------------------------- the update

    def _find_refund(self, refund_id: str) -> RefundRecord | None:
        state = self._require_state()
        return next((refund for refund in state.refunds if refund.refund_id == refund_id), None)

    def _validate_refund(self, request: RefundRequest) -> None:
        """Refuse (ApplicationError `RefundRefused` with a Stripe-like code) before anything is sent."""
        state = self._require_state()
        if self._find_refund(request.refund_id) is not None:
            return  # the same request again: answered with the refund it made
        body = request.refund_id[len(REFUND_ID_PREFIX) :]
        if (
            not request.refund_id.startswith(REFUND_ID_PREFIX)
            or len(body) != REFUND_ID_BODY_LENGTH
            or not body.isascii()
            or not body.isalpha()
            or not body.islower()
        ):
            raise ApplicationError(f"malformed refund id {request.refund_id!r}", type="InvalidRequest")
        if request.amount is not None and (isinstance(request.amount, bool) or request.amount < 1):
            raise ApplicationError(
                "amount must be a positive integer", {"code": "parameter_invalid_integer"}, type="RefundRefused"
            )
        if request.reason is not None and request.reason not in REFUND_REASONS:
            raise ApplicationError(
                f"reason must be one of {', '.join(REFUND_REASONS)}",
                {"code": "parameter_invalid"},
                type="RefundRefused",
            )
        refusal = core.refund_refusal(state, request.amount, self._disbursement_pending())
        if refusal is not None:
            raise ApplicationError(refusal.reason, {"code": refusal.code}, type="RefundRefused")

    async def _refund_requested(self, request: RefundRequest) -> RefundRecord:
        """Record the refund, make it at Stripe and book it; recoveries continue in the main loop."""
        state = self._require_state()
        amount = request.amount if request.amount is not None else core.refundable_amount(state)
        record = core.refund_record(
            state, request.refund_id, amount, request.reason, self._require_input().refund_policy
        )
        record.request_id = request.request_id
        record.created_unix_seconds = workflow.now().timestamp()
        state.refunds.append(record)
        self._note(f"refund {record.refund_id} of {amount} requested")
        try:
            await self._advance_refund(record, recover=False)
        except StepFailed as failure:
            if record.status == REFUND_FAILED:
                raise ApplicationError(
                    f"Stripe refused the refund: {failure.message}", {"code": "refund_refused"}, type="RefundRefused"
                ) from None
            await self._review_failure(failure)
        return record

    # ----------------------------------------------------------------- the steps

    def _refund_work_pending(self) -> bool:
        return any(self._refund_unfinished(refund) for refund in self._require_state().refunds)

    @staticmethod
    def _refund_unfinished(refund: RefundRecord) -> bool:
        return refund.status == REFUND_PENDING and (
            refund.stripe_refund_id is None
            or not refund.booked
            or any(not recovery.booked for recovery in refund.recoveries)
        )

    async def _advance_refunds(self) -> None:
        for refund in list(self._require_state().refunds):
            if self._refund_unfinished(refund):
                await self._advance_refund(refund, recover=True)

    async def _advance_refund(self, record: RefundRecord, *, recover: bool) -> None:
        state = self._require_state()
        workflow_id = workflow.info().workflow_id
        if record.stripe_refund_id is None:
            base_key = f"{workflow_id}:refund:{record.refund_id}"
            try:
                snapshot = await self._stripe_post(
                    f"refund:{record.refund_id}",
                    base_key,
                    lambda key: self._stripe(
                        "stripe_create_refund",
                        RefundInput(
                            idempotency_key=key,
                            payment_intent_id=state.stripe_payment_intent_id or "",
                            amount=record.amount,
                            refund_id=record.refund_id,
                            payment_id=state.payment_id,
                            order_id=state.order_id,
                            reason=record.reason,
                        ),
                        RefundSnapshot,
                    ),
                    lambda: self._find_stripe_refund(record),
                    "refund",
                )
            except StepFailed as failure:
                if not core.is_ambiguous(failure.error_type):
                    # Stripe answered no: nothing moved, nothing is booked; the refund stays, failed.
                    record.status, record.failure_reason = REFUND_FAILED, failure.message[:500]
                    await self._book(
                        f"refund:{record.refund_id}:refused",
                        [],
                        f"refund {record.refund_id} refused by Stripe",
                        refund=record,
                    )
                raise
            record.stripe_refund_id, record.stripe_status = snapshot.id, snapshot.status
            if snapshot.status not in REFUND_ACCEPTED_STATUSES:
                await self._refund_failed(record, snapshot)
                return
        if not record.booked:
            await self._book_refund(record)
        if not recover:
            return
        for recovery in record.recoveries:
            if not recovery.booked:
                await self._recover(record, recovery)
        if record.stripe_status == "succeeded" and all(recovery.booked for recovery in record.recoveries):
            record.status = REFUND_SUCCEEDED
            await self._book(
                f"refund:{record.refund_id}:succeeded", [], f"refund {record.refund_id} succeeded", refund=record
            )

    async def _find_stripe_refund(self, record: RefundRecord) -> RefundSnapshot | None:
        state = self._require_state()
        found = await self._stripe(
            "stripe_find_refund",
            FindRefundInput(payment_intent_id=state.stripe_payment_intent_id or "", refund_id=record.refund_id),
            FindRefundResult,
        )
        if found.matches > 1:
            raise StepFailed(
                f"refund:{record.refund_id}",
                "DuplicateRefund",
                f"{found.matches} Stripe refunds carry Penny refund {record.refund_id}",
                kind="duplicate_refund",
                resume="cancel or account for the extra refund at Stripe, then resolve with `retry`",
            )
        return found.refund if found.found else None

    async def _book_refund(self, record: RefundRecord) -> None:
        """The refund entry and the status it leads to, in one transaction (the money left Stripe)."""
        state = self._require_state()
        if not state.refunds or all(refund.booked is False for refund in state.refunds):
            state.status_before_refunds = state.status
        record.booked = True
        record.recoveries = [RefundRecovery(part.account_id, part.amount) for part in record.recipients]
        refunded = core.refunded_amount(state)
        parts = ComputedSplit(
            total=record.amount,
            currency=state.currency,
            platform_fee=record.platform_fee,
            tax=record.tax,
            parts=list(record.recipients),
        )
        ledger = [LedgerAction("refund", amount=record.amount, reference=record.refund_id, parts=parts)]
        row = PaymentRowUpdate(amount_refunded=refunded)
        event = E.REFUNDED if refunded >= state.amount_captured else E.PARTIALLY_REFUNDED
        reason = f"refund {record.refund_id} of {record.amount} ({record.stripe_refund_id})"
        try:
            moved = await self._transition(
                event,
                actor="api",
                reason=reason,
                ledger=ledger,
                row=row,
                refund=record,
                request_id=record.request_id or None,
            )
            if not moved:
                # The status cannot follow (e.g. a dispute opened meanwhile): the money is booked anyway.
                await self._book(f"refund:{record.refund_id}", ledger, reason, refund=record, row=row)
        except StepFailed:
            record.booked = False
            record.recoveries = []
            raise
        state.amount_refunded = refunded

    async def _reverse_share(
        self, step: str, reference: str, account_id: str, amount: int, kind: str
    ) -> ReversalResult:
        """Pull `amount` back from `account_id`'s transfer for this payment: one Stripe step (key
        `<workflow id>:<step>`, `reference` in the reversal's metadata), looked up before it is sent again."""
        state = self._require_state()
        paid = next((item for item in state.transfers if item.account_id == account_id), None)
        if paid is None or paid.transfer_id is None:
            raise StepFailed(step, "NotTransferred", f"{account_id} was never paid: nothing to reverse", kind=kind)
        destination = paid.transfer_id == "destination_charge"
        transfer_id = None if destination else paid.transfer_id
        charge_id = state.stripe_charge_id if destination else None

        async def act(key: str) -> ReversalResult:
            return await self._stripe(
                "stripe_reverse_transfer",
                ReversalInput(
                    idempotency_key=key,
                    amount=amount,
                    reference=reference,
                    payment_id=state.payment_id,
                    account_id=account_id,
                    transfer_id=transfer_id,
                    charge_id=charge_id,
                ),
                ReversalResult,
            )

        async def lookup() -> ReversalResult | None:
            found = await self._stripe(
                "stripe_find_reversal",
                FindReversalInput(
                    reference=reference, account_id=account_id, transfer_id=transfer_id, charge_id=charge_id
                ),
                FindReversalResult,
            )
            return found.reversal if found.found else None

        try:
            reversal = await self._stripe_post(
                step, f"{workflow.info().workflow_id}:{step}", act, lookup, "transfer reversal"
            )
        except StepFailed as failure:
            failure.kind = kind
            raise
        if reversal.amount != amount:
            raise StepFailed(
                step,
                "ReversalAmountMismatch",
                f"reversal {reversal.reversal_id} is {reversal.amount}, the share is {amount}",
                kind=kind,
            )
        return reversal

    async def _recover(self, record: RefundRecord, recovery: RefundRecovery) -> None:
        """Pull one recipient's share of a refund back with a transfer reversal; book it as it lands."""
        recovery.attempts += 1
        try:
            reversal = await self._reverse_share(
                f"refund:{record.refund_id}:reversal:{recovery.account_id}",
                record.refund_id,
                recovery.account_id,
                recovery.amount,
                "refund_recovery_failed",
            )
        except StepFailed as failure:
            recovery.error = failure.message[:200]
            failure.resume = (
                f"the buyer is refunded; {recovery.account_id}'s share {recovery.amount} is not back yet "
                "(it is in payment:<id>:refund_recoverable): resolve with `retry` to reverse it again"
            )
            raise
        recovery.reversal_id, recovery.error = reversal.reversal_id, ""
        recovery.booked = True
        try:
            await self._book(
                f"refund:{record.refund_id}:recovery:{recovery.account_id}",
                [
                    LedgerAction(
                        "refund_recovery",
                        amount=recovery.amount,
                        account_id=recovery.account_id,
                        reference=record.refund_id,
                        reversal_id=reversal.reversal_id,
                    )
                ],
                f"{recovery.account_id} gave back {recovery.amount} of {record.refund_id} ({reversal.reversal_id})",
                refund=record,
            )
        except StepFailed:
            recovery.booked = False
            raise

    # ----------------------------------------------------------------- lost disputes (policy `recipients`)

    def _dispute_recovery_pending(self) -> bool:
        return any(not item.booked for item in self._require_state().dispute_recoveries)

    def _plan_dispute_recovery(self, dispute_id: str, amount: int) -> None:
        """Under the `recipients` policy, each paid recipient owes its share of the lost amount."""
        state = self._require_state()
        if self._require_input().dispute_loss_policy != "recipients" or state.split is None:
            return
        if any(item.dispute_id == dispute_id for item in state.dispute_recoveries):
            return
        remaining = core.remaining_parts(state)
        shares = core.largest_remainder(remaining, min(amount, sum(remaining)))[2:]
        for part, share in zip(state.split.parts, shares, strict=True):
            if share > 0:
                state.dispute_recoveries.append(DisputeRecovery(dispute_id, part.account_id, share))

    async def _advance_dispute_recoveries(self) -> None:
        for item in self._require_state().dispute_recoveries:
            if item.booked:
                continue
            item.attempts += 1
            try:
                reversal = await self._reverse_share(
                    f"dispute:{item.dispute_id}:reversal:{item.account_id}",
                    item.dispute_id,
                    item.account_id,
                    item.amount,
                    "dispute_recovery_failed",
                )
            except StepFailed as failure:
                item.error = failure.message[:200]
                failure.resume = (
                    f"dispute {item.dispute_id} is lost; {item.account_id}'s share {item.amount} is not back yet "
                    "(the platform bears it until then): resolve with `retry` to reverse it again"
                )
                raise
            item.reversal_id, item.error, item.booked = reversal.reversal_id, "", True
            try:
                await self._book(
                    f"dispute:{item.dispute_id}:recovery:{item.account_id}",
                    [
                        LedgerAction(
                            "dispute_recovery",
                            amount=item.amount,
                            account_id=item.account_id,
                            reference=item.dispute_id,
                            reversal_id=reversal.reversal_id,
                        )
                    ],
                    f"{item.account_id} bore {item.amount} of lost dispute {item.dispute_id} ({reversal.reversal_id})",
                )
            except StepFailed:
                item.booked = False
                raise

    # ----------------------------------------------------------------- Stripe's word on a refund

    async def _handle_refund_event(self, event: StripeEventSignal) -> None:
        """A refund event: re-fetch the refund and act on what Stripe says it is now."""
        state = self._require_state()
        snapshot = await self._stripe("stripe_retrieve_refund", event.object_id, RefundSnapshot)
        record = next(
            (
                refund
                for refund in state.refunds
                if refund.stripe_refund_id == snapshot.id
                or (snapshot.refund_id and refund.refund_id == snapshot.refund_id)
            ),
            None,
        )
        if record is None:
            await self._book(
                f"refund_unknown:{snapshot.id}",
                [],
                f"Stripe refund {snapshot.id} ({snapshot.amount}) was not made by Penny",
                review=ReviewSpec(
                    kind="refund_unknown",
                    reason=f"Stripe refund {snapshot.id} of {snapshot.amount} {snapshot.currency} not made by Penny",
                    details={
                        "stripe_refund": snapshot.id,
                        "status": snapshot.status,
                        "resume": "book it by hand or undo it at Stripe; refund through POST /v1/payments/{id}/refunds",
                    },
                ),
            )
            await self._ignore(event, f"refund {snapshot.id} is not one of this payment's refunds (review opened)")
            return
        if record.stripe_refund_id is None:
            record.stripe_refund_id = snapshot.id
        if record.status == REFUND_FAILED or (record.status == REFUND_SUCCEEDED and snapshot.status == "succeeded"):
            await self._ignore(event, f"refund {record.refund_id} is {record.status} already")
            return
        record.stripe_status = snapshot.status
        if snapshot.status in ("failed", "canceled"):
            await self._refund_failed(record, snapshot, stripe_event_id=event.event_id)
            return
        if snapshot.status == "succeeded" and record.booked and all(item.booked for item in record.recoveries):
            record.status = REFUND_SUCCEEDED
            await self._book(
                f"refund:{record.refund_id}:succeeded", [], f"refund {record.refund_id} succeeded", refund=record
            )
            return
        await self._ignore(event, f"refund {record.refund_id} is {snapshot.status} at Stripe; its steps continue")

    async def _refund_failed(
        self, record: RefundRecord, snapshot: RefundSnapshot, *, stripe_event_id: str | None = None
    ) -> None:
        """Stripe says the refund failed: book the money back (if it was booked) and ask a human."""
        state = self._require_state()
        reason = snapshot.failure_reason or snapshot.status
        record.status, record.failure_reason = REFUND_FAILED, reason
        note = f"refund {record.refund_id} ({snapshot.id}) {snapshot.status}: {reason}"
        if not record.booked:
            await self._book(f"refund:{record.refund_id}:failed", [], note, refund=record)
            return
        recovered = {item.account_id: item.amount for item in record.recoveries if item.booked}
        parts = ComputedSplit(record.amount, state.currency, record.platform_fee, record.tax, list(record.recipients))
        refunded = core.refunded_amount(state)
        state.amount_refunded = refunded
        await self._book(
            f"refund:{record.refund_id}:failed",
            [
                LedgerAction(
                    "refund_failed", amount=record.amount, reference=record.refund_id, parts=parts, recovered=recovered
                )
            ],
            note,
            refund=record,
            row=PaymentRowUpdate(amount_refunded=refunded),
        )
        record.failure_booked = True
        # Where `retry` returns the payment: as refunded as the refunds that still stand.
        before = S.PARTIALLY_REFUNDED if refunded > 0 else S(state.status_before_refunds or S.SETTLED)
        details = {
            "refund": record.refund_id,
            "stripe_refund": snapshot.id,
            "amount": str(record.amount),
            "failure_reason": reason,
            "resume": (
                "the buyer was NOT refunded and the money is back in the Stripe balance; refund again "
                "(POST /v1/payments/{id}/refunds) or contact the buyer, then resolve with `retry`"
                + (
                    "; these recipients had given their share back and are owed it again (re-transfer at Stripe): "
                    + ", ".join(f"{account} {amount}" for account, amount in recovered.items())
                    if recovered
                    else ""
                )
            ),
        }
        await self._enter_review("refund_failed", note, details, stripe_event_id=stripe_event_id)
        state.review_status_before = before

    async def _poll_refunds(self) -> None:
        """Ask Stripe about each refund it has not confirmed yet."""
        for record in self._require_state().refunds:
            if record.status == REFUND_PENDING and record.stripe_refund_id and record.stripe_status != "succeeded":
                snapshot = await self._stripe("stripe_retrieve_refund", record.stripe_refund_id, RefundSnapshot)
                record.stripe_status = snapshot.status
                if snapshot.status in ("failed", "canceled"):
                    await self._refund_failed(record, snapshot)
                elif snapshot.status == "succeeded" and all(item.booked for item in record.recoveries):
                    record.status = REFUND_SUCCEEDED
                    await self._book(
                        f"refund:{record.refund_id}:succeeded",
                        [],
                        f"refund {record.refund_id} succeeded",
                        refund=record,
                    )

    def _refund_awaiting_stripe(self) -> bool:
        return any(
            record.status == REFUND_PENDING
            and record.booked
            and record.stripe_status != "succeeded"
            and all(item.booked for item in record.recoveries)
            for record in self._require_state().refunds
        )
