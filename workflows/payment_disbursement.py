"""After capture: Stripe's fee, one transfer per recipient (each paid exactly once), settlement.

Disbursement is per recipient: each TransferRecord has its own durable state (pending,
succeeded, failed, in_review) and its own Stripe step; a transfer is looked up (transfer
group + our payment id + destination) before it is ever sent again, and an operator's retry
pays only the recipients still unpaid. Settlement books only what stayed with the platform.

Deterministic workflow code (a mixin of PaymentWorkflow): no I/O outside `workflow.*`.
"""

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from activities.payment_types import (
        LedgerAction,
    )
    from activities.stripe_types import (
        ChargeBalance,
        ChargeBalanceInput,
        FindTransferInput,
        FindTransferResult,
        TransferInput,
        TransferResult,
    )

from workflows import payment_core as core
from workflows.payment_charge import ChargeSteps
from workflows.payment_models import (
    TRANSFER_FAILED,
    TRANSFER_IN_REVIEW,
    TRANSFER_SUCCEEDED,
    TransferRecord,
)
from workflows.payment_shell import E, S, StepFailed


class DisbursementSteps(ChargeSteps):
    async def _after_capture(self) -> None:
        """CAPTURED and disbursed (see PaymentWorkflow._step): wait for Stripe to make the funds available."""
        state = self._require_state()
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

    def _disbursement_pending(self) -> bool:
        state = self._require_state()
        return state.amount_captured > 0 and (
            not state.fee_booked or any(not record.booked for record in state.transfers)
        )

    def _transfer_wait_seconds(self) -> float:
        """Seconds until the next transfer round may run (0: now)."""
        next_round = self._require_state().transfer_next_round_unix_seconds
        return 0.0 if next_round is None else max(0.0, next_round - workflow.now().timestamp())

    async def _disburse(self) -> None:
        """One round: book Stripe's fee, then pay each recipient still unpaid, exactly once, with its own key.

        A round that leaves a recipient unpaid schedules the next one (backoff from PaymentTimings);
        the wait happens outside the lock, so events and updates are handled meanwhile. After
        transfer_rounds_max rounds the payment goes to review; an operator's retry starts afresh.
        """
        state = self._require_state()
        timings = self._timings()
        if state.split is None:
            state.fee_booked = True
            return
        if not state.fee_booked:
            await self._book_fee()
        for record in state.transfers:
            if record.transfer_id is None:
                await self._transfer(record)
            elif not record.booked:
                await self._book_transfer(record)
        if all(record.booked for record in state.transfers):
            state.transfer_rounds, state.transfer_next_round_unix_seconds = 0, None
            return
        state.transfer_rounds += 1
        if state.transfer_rounds < timings.transfer_rounds_max:
            delay = min(
                timings.transfer_retry_initial_seconds * 2 ** (state.transfer_rounds - 1),
                timings.transfer_retry_maximum_seconds,
            )
            state.transfer_next_round_unix_seconds = workflow.now().timestamp() + delay
            self._note(f"transfer round {state.transfer_rounds} left recipients unpaid; next round in {delay:.0f} s")
            return
        rounds, state.transfer_rounds, state.transfer_next_round_unix_seconds = state.transfer_rounds, 0, None
        unpaid = [record for record in state.transfers if record.transfer_id is None]
        for record in unpaid:
            record.status = TRANSFER_IN_REVIEW
        failure = StepFailed(
            "transfer",
            "TransferFailed",
            f"{len(unpaid)} of {len(state.transfers)} transfers failed after {rounds} rounds",
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
            if state.stripe_charge_fee is not None and state.stripe_charge_fee_charge_id == state.stripe_charge_id:
                # The create or capture response carried the fee (patch fee-from-intent-v1).
                state.stripe_fee = state.stripe_charge_fee
            else:
                balance = await self._stripe(
                    "stripe_charge_balance", ChargeBalanceInput(state.stripe_charge_id), ChargeBalance
                )
                state.stripe_fee = balance.fee
            if state.stripe_fee:
                fee_booking = [LedgerAction("processing_fee", amount=state.stripe_fee)]
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
