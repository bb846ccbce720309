"""Inputs and outputs of the Stripe activities: pure dataclasses the workflow may import."""

from __future__ import annotations

from dataclasses import dataclass, field

CARD_DECLINED = "CardDeclined"
STRIPE_REQUEST_REFUSED = "StripeRequestRefused"
# Stripe answered a POST with a 5xx: it saved that answer under the idempotency key and will
# replay it for 24 h, so retrying the same key cannot help. The outcome is unknown: look the
# object up, then act again under a new key (workflows/payment.py `_stripe_post`).
STRIPE_SERVER_ERROR = "StripeServerError"


@dataclass
class CreateIntentInput:
    idempotency_key: str
    order_id: str
    payment_id: str
    amount: int
    currency: str
    customer: str
    payment_method: str
    capture_method: str
    description: str = ""
    metadata: dict[str, str] = field(default_factory=dict)
    transfer_group: str | None = None
    destination_account: str | None = None
    application_fee_amount: int | None = None
    # Ask Stripe for the charge's balance transaction in the same response (its fee): the
    # workflow then books the fee without a charge lookup. False for activities scheduled
    # before patch fee-from-intent-v1, so their retries send the request they first sent.
    expand_fee: bool = False


@dataclass
class IntentSnapshot:
    """What Penny needs to know about a PaymentIntent, as Stripe reported it."""

    id: str
    status: str
    amount: int
    amount_capturable: int
    amount_received: int
    currency: str
    latest_charge: str | None = None
    next_action_url: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    order_id: str | None = None
    # Stripe's fee on latest_charge, when the response carried its balance transaction
    # (expanded; a charge has one once it is captured). None: not known from this response.
    charge_fee: int | None = None


@dataclass
class FindIntentInput:
    order_id: str


@dataclass
class FindIntentResult:
    found: bool
    intent: IntentSnapshot | None = None
    matches: int = 0
    # Every PaymentIntent of the order that moved money (succeeded or requires_capture):
    # more than one is a double charge.
    charged_intent_ids: list[str] = field(default_factory=list)


@dataclass
class FindTransferInput:
    transfer_group: str
    destination: str
    payment_id: str


@dataclass
class FindTransferResult:
    found: bool
    transfer_id: str | None = None
    amount: int = 0
    matches: int = 0


@dataclass
class IntentActionInput:
    payment_intent_id: str
    idempotency_key: str
    amount: int | None = None
    reason: str | None = None
    expand_fee: bool = False  # as CreateIntentInput.expand_fee


@dataclass
class TransferInput:
    idempotency_key: str
    payment_id: str
    order_id: str
    destination: str
    amount: int
    currency: str
    transfer_group: str
    source_transaction: str | None = None


@dataclass
class TransferResult:
    transfer_id: str
    amount: int
    destination: str


@dataclass
class ChargeBalanceInput:
    charge_id: str


@dataclass
class ChargeBalance:
    charge_id: str
    balance_transaction_id: str | None
    fee: int
    net: int
    status: str  # pending | available
    available_on: int | None = None


@dataclass
class DisputeSnapshot:
    """A dispute as Stripe reports it now (re-fetched: the webhook's copy may be stale)."""

    id: str
    # warning_needs_response, warning_under_review, warning_closed, needs_response, under_review, won, lost
    status: str
    amount: int
    currency: str
    fee: int  # dispute fees Stripe withdrew with the disputed amount
    charge: str | None = None
    payment_intent: str | None = None


@dataclass
class RefundInput:
    """A Stripe refund of a PaymentIntent; `refund_id` is Penny's, carried in metadata for look-ups."""

    idempotency_key: str
    payment_intent_id: str
    amount: int
    refund_id: str
    payment_id: str
    order_id: str
    reason: str | None = None


@dataclass
class RefundSnapshot:
    """A Stripe refund as Stripe reports it now."""

    id: str
    status: str  # pending | requires_action | succeeded | failed | canceled
    amount: int
    currency: str
    refund_id: str | None = None  # Penny's id, from metadata
    payment_intent: str | None = None
    failure_reason: str | None = None


@dataclass
class FindRefundInput:
    payment_intent_id: str
    refund_id: str


@dataclass
class FindRefundResult:
    found: bool
    refund: RefundSnapshot | None = None
    matches: int = 0


@dataclass
class ReversalInput:
    """A transfer reversal recovering one recipient's share of a refund or a lost dispute.

    `reference` is Penny's refund id or the dispute id (in the reversal's metadata, for
    look-ups). `transfer_id` is the recipient's transfer; for a destination charge pass
    `charge_id` instead and the activity reverses the charge's own transfer.
    """

    idempotency_key: str
    amount: int
    reference: str
    payment_id: str
    account_id: str
    transfer_id: str | None = None
    charge_id: str | None = None


@dataclass
class ReversalResult:
    reversal_id: str
    amount: int
    transfer_id: str


@dataclass
class FindReversalInput:
    reference: str
    account_id: str
    transfer_id: str | None = None
    charge_id: str | None = None


@dataclass
class FindReversalResult:
    found: bool
    reversal: ReversalResult | None = None
    matches: int = 0
