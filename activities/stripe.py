"""Stripe calls, made with the official `stripe` SDK (StripeClient, async methods).

Rules (DESIGN.md "Processor calls and uncertainty"):
- Every POST carries an idempotency key derived from the workflow id and the step, never
  random: the same step retried sends the same key, so Stripe (or the emulator) replays the
  first outcome instead of charging twice.
- A card decline is a business outcome: raised as a non-retryable ApplicationError of type
  `CardDeclined`, so the workflow fails the payment without retrying.
- Timeouts, connection errors, 429 and 409 (key in use) are "outcome unknown, answer not
  saved": the activity raises an ordinary (retryable) error and Temporal retries it with the
  same key. The retry cap is set by the workflow (PaymentTimings) and ends far inside
  Stripe's 24 h idempotency window.
- A 5xx answer to a POST is saved by Stripe under the key and replayed for 24 h: retrying the
  key only replays it. It is a non-retryable `StripeServerError`; the workflow looks the
  object up and, if it is not there, acts again under a new key. A 5xx to a GET is retried.
- Other 4xx (a bad request we built, an idempotency mismatch) are non-retryable
  `StripeRequestRefused`: retrying cannot help, a human must look (NEEDS_REVIEW).
- The SDK's own network retries are off: Temporal owns retries, so each attempt is visible
  in the workflow history.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote_plus

import stripe
from temporalio import activity
from temporalio.exceptions import ApplicationError

from activities.stripe_types import (
    CARD_DECLINED,
    STRIPE_REQUEST_REFUSED,
    STRIPE_SERVER_ERROR,
    ChargeBalance,
    ChargeBalanceInput,
    CreateIntentInput,
    DisputeSnapshot,
    FindIntentInput,
    FindIntentResult,
    FindRefundInput,
    FindRefundResult,
    FindReversalInput,
    FindReversalResult,
    FindTransferInput,
    FindTransferResult,
    IntentActionInput,
    IntentSnapshot,
    RefundInput,
    RefundSnapshot,
    ReversalInput,
    ReversalResult,
    TransferInput,
    TransferResult,
)
from penny import payment_metrics
from penny.settings import Settings

STRIPE_HTTP_TIMEOUT_SECONDS = 20.0
SEARCH_RESULTS_MAX = 10
# The PaymentIntent's charge with its balance transaction (Stripe's fee), in the same response.
EXPAND_CHARGE_FEE = "latest_charge.balance_transaction"
PAYMENT_INTENTS_PATH = "/v1/payment_intents"
TRANSFER_PAGE_SIZE = 100
TRANSFER_PAGES_MAX = 10


def _path_id(object_id: str) -> str:
    """An object id as a URL path segment (the SDK's typed methods quote it the same way)."""
    return quote_plus(object_id)


def _plain(stripe_object: Any) -> dict[str, Any]:
    """SDK objects are not dicts (v15+): convert before reading optional fields."""
    if hasattr(stripe_object, "to_dict"):
        return stripe_object.to_dict()  # type: ignore[no-any-return]
    return dict(stripe_object)


def snapshot(stripe_intent: Any) -> IntentSnapshot:
    intent = _plain(stripe_intent)
    next_action_url = None
    next_action = intent.get("next_action")
    if next_action:
        redirect = next_action.get("redirect_to_url") or {}
        next_action_url = redirect.get("url")
    error = intent.get("last_payment_error") or {}
    metadata = intent.get("metadata") or {}
    latest_charge = intent.get("latest_charge")
    charge_fee = None
    if isinstance(latest_charge, dict):
        transaction = latest_charge.get("balance_transaction")
        if isinstance(transaction, dict):
            charge_fee = int(transaction.get("fee") or 0)
        latest_charge = latest_charge.get("id")
    return IntentSnapshot(
        id=intent["id"],
        status=intent["status"],
        amount=int(intent["amount"]),
        amount_capturable=int(intent.get("amount_capturable") or 0),
        amount_received=int(intent.get("amount_received") or 0),
        currency=str(intent["currency"]).upper(),
        latest_charge=latest_charge,
        next_action_url=next_action_url,
        failure_code=error.get("decline_code") or error.get("code"),
        failure_message=error.get("message"),
        order_id=metadata.get("order_id"),
        charge_fee=charge_fee,
    )


def refund_snapshot(stripe_refund: Any) -> RefundSnapshot:
    refund = _plain(stripe_refund)
    intent = refund.get("payment_intent")
    return RefundSnapshot(
        id=str(refund["id"]),
        status=str(refund.get("status") or "pending"),
        amount=int(refund["amount"]),
        currency=str(refund["currency"]).upper(),
        refund_id=(refund.get("metadata") or {}).get("refund_id"),
        payment_intent=intent.get("id") if isinstance(intent, dict) else intent,
        failure_reason=refund.get("failure_reason"),
    )


def _reversal(plain: dict[str, Any]) -> ReversalResult:
    transfer = plain.get("transfer")
    return ReversalResult(
        reversal_id=str(plain["id"]),
        amount=int(plain["amount"]),
        transfer_id=str(transfer.get("id") if isinstance(transfer, dict) else transfer),
    )


def _refused(error: stripe.StripeError, what: str) -> ApplicationError:
    return ApplicationError(
        f"Stripe refused {what}: {error.user_message or error}",
        {"code": getattr(error, "code", None), "http_status": error.http_status},
        type=STRIPE_REQUEST_REFUSED,
        non_retryable=True,
    )


def _error_kind(error: stripe.StripeError) -> str:
    if isinstance(error, stripe.CardError):
        return "declined"
    if isinstance(error, stripe.APIConnectionError):
        return "timeout"
    status = error.http_status or 0
    if status >= 500:
        return "server_error"
    if isinstance(error, stripe.RateLimitError) or status == 429:
        return "rate_limited"
    if status == 409:
        return "conflict"
    return "refused"


def _classify(error: stripe.StripeError, what: str, *, post: bool = False) -> Exception:
    """Map a Stripe SDK error to retryable (plain) or non-retryable (ApplicationError).

    `post`: the request carried an idempotency key, so a 5xx answer is saved under it.
    Counted in penny_stripe_errors_total (and penny_stripe_ambiguous_outcomes_total for a POST
    whose outcome is unknown).
    """
    payment_metrics.record_stripe_error(what, _error_kind(error), post=post)
    if isinstance(error, stripe.CardError):
        return ApplicationError(
            f"card declined: {error.user_message or error}",
            {
                "code": error.code,
                "decline_code": getattr(error, "error", None) and error.error.decline_code,  # type: ignore[union-attr]
                "message": error.user_message,
            },
            type=CARD_DECLINED,
            non_retryable=True,
        )
    status = error.http_status or 0
    if post and status >= 500:
        return ApplicationError(
            f"Stripe {what} answered HTTP {status}: outcome unknown, saved under the idempotency key",
            {"http_status": status},
            type=STRIPE_SERVER_ERROR,
            non_retryable=True,
        )
    if isinstance(error, stripe.APIConnectionError | stripe.RateLimitError) or status >= 500 or status in (0, 409):
        # 409 is Stripe's "idempotency key in use": the first attempt is still running.
        return RuntimeError(f"Stripe {what} outcome unknown (HTTP {status}): {type(error).__name__}")
    return _refused(error, what)


class StripeActivities:
    def __init__(self, settings: Settings) -> None:
        self._client = stripe.StripeClient(
            settings.stripe_api_key,
            base_addresses={"api": settings.effective_stripe_api_base},
            http_client=stripe.HTTPXClient(timeout=STRIPE_HTTP_TIMEOUT_SECONDS),
            max_network_retries=0,
        )

    @activity.defn(name="stripe_create_payment_intent")
    async def create_payment_intent(self, request: CreateIntentInput) -> IntentSnapshot:
        params: dict[str, Any] = {
            "amount": request.amount,
            "currency": request.currency.lower(),
            "payment_method": request.payment_method,
            "confirm": True,
            "capture_method": request.capture_method,
            "metadata": {**request.metadata, "order_id": request.order_id, "payment_id": request.payment_id},
            "payment_method_types": ["card"],
        }
        if request.description:
            params["description"] = request.description
        if request.transfer_group:
            params["transfer_group"] = request.transfer_group
        if request.destination_account:
            params["transfer_data"] = {"destination": request.destination_account}
            if request.application_fee_amount:
                params["application_fee_amount"] = request.application_fee_amount
        if request.expand_fee:
            params["expand"] = [EXPAND_CHARGE_FEE]
        try:
            intent = await self._intent_request("post", "", params, idempotency_key=request.idempotency_key)
        except stripe.StripeError as error:
            raise _classify(error, "payment intent create", post=True) from error
        return snapshot(intent)

    async def _intent_request(
        self, method: str, path: str, params: dict[str, Any] | None = None, *, idempotency_key: str | None = None
    ) -> dict[str, Any]:
        """A PaymentIntent request whose answer is read as the JSON it is.

        The SDK's typed methods send the same request and raise the same errors, then build a
        tree of StripeObjects that `snapshot` only turns back into dicts: 3 % of the worker's
        CPU on the payment path (#16). `path` is "" (the collection) or "/<id>[/<action>]".
        """
        options = {} if idempotency_key is None else {"idempotency_key": idempotency_key}
        response = await self._client.raw_request_async(
            method, f"{PAYMENT_INTENTS_PATH}{path}", **(params or {}), **options
        )
        answer = response.data
        if not isinstance(answer, dict) or answer.get("object") != "payment_intent":
            raise stripe.APIError(
                f"Stripe answered {method.upper()} {PAYMENT_INTENTS_PATH}{path} with no PaymentIntent"
            )
        return answer

    @activity.defn(name="stripe_retrieve_payment_intent")
    async def retrieve_payment_intent(self, payment_intent_id: str) -> IntentSnapshot:
        try:
            intent = await self._intent_request("get", f"/{_path_id(payment_intent_id)}")
        except stripe.StripeError as error:
            raise _classify(error, "payment intent retrieve") from error
        return snapshot(intent)

    @activity.defn(name="stripe_find_payment_intent")
    async def find_payment_intent(self, request: FindIntentInput) -> FindIntentResult:
        """Look a PaymentIntent up by our order id in metadata (after an ambiguous outcome)."""
        escaped = request.order_id.replace("'", "\\'")
        try:
            found = await self._client.v1.payment_intents.search_async(
                {"query": f"metadata['order_id']:'{escaped}'", "limit": SEARCH_RESULTS_MAX}
            )
        except stripe.StripeError as error:
            raise _classify(error, "payment intent search") from error
        intents = list(found.data)
        if not intents:
            return FindIntentResult(found=False)
        # Prefer an intent that moved money; several would be a double charge to surface.
        intents.sort(key=lambda intent: (intent["status"] != "succeeded", intent["status"] != "requires_capture"))
        charged = [intent["id"] for intent in intents if intent["status"] in ("succeeded", "requires_capture")]
        return FindIntentResult(
            found=True, intent=snapshot(intents[0]), matches=len(intents), charged_intent_ids=charged
        )

    @activity.defn(name="stripe_find_transfer")
    async def find_transfer(self, request: FindTransferInput) -> FindTransferResult:
        """Look a recipient's transfer up by transfer group, destination and our payment id.

        Listing by transfer_group is strongly consistent (unlike search), so a transfer Stripe
        created is always found. Pages are bounded by TRANSFER_PAGES_MAX.
        """
        matches: list[dict[str, Any]] = []
        params: dict[str, Any] = {"transfer_group": request.transfer_group, "limit": TRANSFER_PAGE_SIZE}
        try:
            for _ in range(TRANSFER_PAGES_MAX):
                page = await self._client.v1.transfers.list_async(params)  # type: ignore[arg-type]
                for transfer in page.data:
                    plain = _plain(transfer)
                    metadata = plain.get("metadata") or {}
                    if plain.get("destination") == request.destination and (
                        metadata.get("payment_id") == request.payment_id
                    ):
                        matches.append(plain)
                if not page.has_more or not page.data:
                    break
                params["starting_after"] = page.data[-1]["id"]
        except stripe.StripeError as error:
            raise _classify(error, "transfer list") from error
        if not matches:
            return FindTransferResult(found=False)
        first = min(matches, key=lambda transfer: int(transfer.get("created") or 0))
        return FindTransferResult(
            found=True, transfer_id=str(first["id"]), amount=int(first["amount"]), matches=len(matches)
        )

    @activity.defn(name="stripe_capture_payment_intent")
    async def capture_payment_intent(self, request: IntentActionInput) -> IntentSnapshot:
        params: dict[str, Any] = {} if request.amount is None else {"amount_to_capture": request.amount}
        if request.expand_fee:
            params["expand"] = [EXPAND_CHARGE_FEE]
        return await self._intent_action("capture", request, params)

    @activity.defn(name="stripe_cancel_payment_intent")
    async def cancel_payment_intent(self, request: IntentActionInput) -> IntentSnapshot:
        params = {"cancellation_reason": request.reason} if request.reason else {}
        return await self._intent_action("cancel", request, params)

    async def _intent_action(self, what: str, request: IntentActionInput, params: dict[str, Any]) -> IntentSnapshot:
        """A POST on an existing PaymentIntent (`what`: capture, cancel), with the step's idempotency key."""
        path = f"/{_path_id(request.payment_intent_id)}/{what}"
        try:
            intent = await self._intent_request("post", path, params, idempotency_key=request.idempotency_key)
        except stripe.StripeError as error:
            raise _classify(error, f"payment intent {what}", post=True) from error
        return snapshot(intent)

    @activity.defn(name="stripe_create_transfer")
    async def create_transfer(self, request: TransferInput) -> TransferResult:
        params: dict[str, Any] = {
            "amount": request.amount,
            "currency": request.currency.lower(),
            "destination": request.destination,
            "transfer_group": request.transfer_group,
            "metadata": {
                "order_id": request.order_id,
                "payment_id": request.payment_id,
                "recipient": request.destination,
            },
        }
        if request.source_transaction:
            params["source_transaction"] = request.source_transaction
        try:
            transfer = await self._client.v1.transfers.create_async(
                params,  # type: ignore[arg-type]
                options={"idempotency_key": request.idempotency_key},
            )
        except stripe.StripeError as error:
            raise _classify(error, "transfer create", post=True) from error
        return TransferResult(
            transfer_id=transfer["id"], amount=int(transfer["amount"]), destination=request.destination
        )

    @activity.defn(name="stripe_charge_balance")
    async def charge_balance(self, request: ChargeBalanceInput) -> ChargeBalance:
        """The charge's balance transaction: Stripe's fee and whether the funds are available yet."""
        try:
            charge = _plain(
                await self._client.v1.charges.retrieve_async(request.charge_id, {"expand": ["balance_transaction"]})
            )
            transaction = charge.get("balance_transaction")
            if isinstance(transaction, str):
                transaction = _plain(await self._client.v1.balance_transactions.retrieve_async(transaction))
        except stripe.StripeError as error:
            raise _classify(error, "charge balance retrieve") from error
        if not transaction:
            return ChargeBalance(request.charge_id, None, 0, int(charge["amount"]), "pending")
        return ChargeBalance(
            charge_id=request.charge_id,
            balance_transaction_id=transaction["id"],
            fee=int(transaction.get("fee") or 0),
            net=int(transaction.get("net") or 0),
            status=str(transaction.get("status") or "pending"),
            available_on=transaction.get("available_on"),
        )

    @activity.defn(name="stripe_retrieve_dispute")
    async def retrieve_dispute(self, dispute_id: str) -> DisputeSnapshot:
        try:
            dispute = _plain(await self._client.v1.disputes.retrieve_async(dispute_id))
        except stripe.StripeError as error:
            raise _classify(error, "dispute retrieve") from error
        fee = sum(
            int(item.get("fee") or 0)
            for item in dispute.get("balance_transactions") or []
            if int(item.get("amount") or 0) < 0
        )
        charge = dispute.get("charge")
        intent = dispute.get("payment_intent")
        return DisputeSnapshot(
            id=str(dispute["id"]),
            status=str(dispute["status"]),
            amount=int(dispute["amount"]),
            currency=str(dispute["currency"]).upper(),
            fee=fee,
            charge=charge.get("id") if isinstance(charge, dict) else charge,
            payment_intent=intent.get("id") if isinstance(intent, dict) else intent,
        )

    # ------------------------------------------------------------------ refunds

    @activity.defn(name="stripe_create_refund")
    async def create_refund(self, request: RefundInput) -> RefundSnapshot:
        params: dict[str, Any] = {
            "payment_intent": request.payment_intent_id,
            "amount": request.amount,
            "metadata": {
                "refund_id": request.refund_id,
                "payment_id": request.payment_id,
                "order_id": request.order_id,
            },
        }
        if request.reason:
            params["reason"] = request.reason
        try:
            refund = await self._client.v1.refunds.create_async(
                params,  # type: ignore[arg-type]
                options={"idempotency_key": request.idempotency_key},
            )
        except stripe.StripeError as error:
            raise _classify(error, "refund create", post=True) from error
        return refund_snapshot(refund)

    @activity.defn(name="stripe_retrieve_refund")
    async def retrieve_refund(self, stripe_refund_id: str) -> RefundSnapshot:
        try:
            refund = await self._client.v1.refunds.retrieve_async(stripe_refund_id)
        except stripe.StripeError as error:
            raise _classify(error, "refund retrieve") from error
        return refund_snapshot(refund)

    @activity.defn(name="stripe_find_refund")
    async def find_refund(self, request: FindRefundInput) -> FindRefundResult:
        """Look a refund up by its PaymentIntent and Penny's refund id in metadata (a strongly consistent list)."""
        matches: list[RefundSnapshot] = []
        params: dict[str, Any] = {"payment_intent": request.payment_intent_id, "limit": TRANSFER_PAGE_SIZE}
        try:
            for _ in range(TRANSFER_PAGES_MAX):
                page = await self._client.v1.refunds.list_async(params)  # type: ignore[arg-type]
                matches.extend(
                    found
                    for found in (refund_snapshot(refund) for refund in page.data)
                    if found.refund_id == request.refund_id
                )
                if not page.has_more or not page.data:
                    break
                params["starting_after"] = page.data[-1]["id"]
        except stripe.StripeError as error:
            raise _classify(error, "refund list") from error
        if not matches:
            return FindRefundResult(found=False)
        return FindRefundResult(found=True, refund=matches[-1], matches=len(matches))

    async def _transfer_of(self, transfer_id: str | None, charge_id: str | None) -> str:
        if transfer_id:
            return transfer_id
        if not charge_id:
            raise ApplicationError(
                "a reversal needs a transfer or a charge", type=STRIPE_REQUEST_REFUSED, non_retryable=True
            )
        try:
            charge = _plain(await self._client.v1.charges.retrieve_async(charge_id))
        except stripe.StripeError as error:
            raise _classify(error, "charge retrieve") from error
        transfer = charge.get("transfer")
        if not transfer:
            raise ApplicationError(
                f"charge {charge_id} has no transfer to reverse", type=STRIPE_REQUEST_REFUSED, non_retryable=True
            )
        return str(transfer.get("id") if isinstance(transfer, dict) else transfer)

    @activity.defn(name="stripe_reverse_transfer")
    async def reverse_transfer(self, request: ReversalInput) -> ReversalResult:
        transfer_id = await self._transfer_of(request.transfer_id, request.charge_id)
        params: dict[str, Any] = {
            "amount": request.amount,
            "metadata": {
                "reference": request.reference,
                "payment_id": request.payment_id,
                "recipient": request.account_id,
            },
        }
        try:
            reversal = await self._client.v1.transfers.reversals.create_async(
                transfer_id,
                params,  # type: ignore[arg-type]
                options={"idempotency_key": request.idempotency_key},
            )
        except stripe.StripeError as error:
            raise _classify(error, "transfer reversal", post=True) from error
        return _reversal(_plain(reversal))

    @activity.defn(name="stripe_find_reversal")
    async def find_reversal(self, request: FindReversalInput) -> FindReversalResult:
        """Look a reversal up among the transfer's reversals (by its reference and recipient, in metadata)."""
        transfer_id = await self._transfer_of(request.transfer_id, request.charge_id)
        matches: list[ReversalResult] = []
        params: dict[str, Any] = {"limit": TRANSFER_PAGE_SIZE}
        try:
            for _ in range(TRANSFER_PAGES_MAX):
                page = await self._client.v1.transfers.reversals.list_async(transfer_id, params)  # type: ignore[arg-type]
                for reversal in page.data:
                    plain = _plain(reversal)
                    metadata = plain.get("metadata") or {}
                    if (
                        metadata.get("reference") == request.reference
                        and metadata.get("recipient") == request.account_id
                    ):
                        matches.append(_reversal(plain))
                if not page.has_more or not page.data:
                    break
                params["starting_after"] = page.data[-1]["id"]
        except stripe.StripeError as error:
            raise _classify(error, "transfer reversal list") from error
        if not matches:
            return FindReversalResult(found=False)
        return FindReversalResult(found=True, reversal=matches[-1], matches=len(matches))
