"""Data passed into, out of and inside the PaymentWorkflow. Sandbox-safe dataclasses only.

Every workflow, update and activity takes ONE dataclass, so fields can be added (with
defaults) without breaking running workflows.
"""

from __future__ import annotations

from dataclasses import dataclass, field

WORKFLOW_ID_PREFIX = "payment-"
PAYMENT_WORKFLOW_NAME = "PaymentWorkflow"

# Update / query / signal names (the API and the webhook intake use these).
UPDATE_FIRST_MILESTONE = "first_milestone"
UPDATE_CAPTURE = "capture"
UPDATE_CANCEL = "cancel"
UPDATE_RESOLVE_REVIEW = "resolve_review"
UPDATE_REFUND = "refund"
QUERY_STATE = "state"
SIGNAL_STRIPE_EVENT = "stripe_event"

# Stripe event types the payment workflow acts on (workflows/payment_events.py, _handle_event).
# It records every other type as ignored, whatever the payment's state, so the webhook router
# (activities/webhooks.py) marks those ignored itself instead of signalling the workflow: a
# signal, a workflow task and a local activity fewer per such event (#16).
REFUND_EVENT_TYPES = frozenset({"refund.created", "refund.updated", "refund.failed", "charge.refund.updated"})
SETTLEMENT_HINT_EVENT_TYPES = frozenset({"balance.available", "payout.paid", "payout.reconciliation_completed"})
ACTED_ON_EVENT_PREFIXES = ("payment_intent.", "transfer.", "charge.dispute.")


def payment_workflow_acts_on(event_type: str, object_type: str | None) -> bool:
    """Whether PaymentWorkflow does anything with a Stripe event of this type but record it."""
    return (
        event_type.startswith(ACTED_ON_EVENT_PREFIXES)
        or event_type in SETTLEMENT_HINT_EVENT_TYPES
        or (event_type in REFUND_EVENT_TYPES and object_type == "refund")
    )


DAY_SECONDS = 24 * 3600


def workflow_id_for_order(order_id: str) -> str:
    return f"{WORKFLOW_ID_PREFIX}{order_id}"


@dataclass
class SplitRecipientSpec:
    """One recipient of the buyer's money: a Stripe connected account and its share.

    Exactly one of `share_bps` (basis points of what remains after fee and tax) or `amount`
    (minor units) is set.
    """

    account_id: str
    share_bps: int | None = None
    amount: int | None = None
    role: str = "seller"


@dataclass
class PaymentTimings:
    """Every wait of a payment, named and bounded. Tests compress them; production keeps defaults."""

    authorization_expiry_seconds: int = 7 * DAY_SECONDS
    requires_action_timeout_seconds: int = DAY_SECONDS
    processing_poll_interval_seconds: int = 60
    processing_polls_max: int = 30
    settlement_poll_interval_seconds: int = 6 * 3600
    settlement_timeout_seconds: int = 10 * DAY_SECONDS
    dispute_window_seconds: int = 120 * DAY_SECONDS
    # Stripe calls retry with backoff up to this many attempts (and end well inside Stripe's
    # 24 h idempotency window: see activities/stripe.py).
    stripe_attempts_max: int = 8
    stripe_initial_interval_seconds: float = 1.0
    stripe_maximum_interval_seconds: float = 60.0
    stripe_call_timeout_seconds: float = 30.0
    uncertain_rounds_max: int = 3
    # Database steps (local activities) retry transient errors (lock timeouts, connection loss)
    # up to this many attempts, then the payment goes to NEEDS_REVIEW.
    database_attempts_max: int = 10
    database_maximum_interval_seconds: float = 30.0
    # A PaymentIntent status Penny does not know is polled this many times, then reviewed.
    unknown_status_polls_max: int = 10
    # Stripe forgets an idempotency key after 24 h: a step first tried longer ago than this
    # looks its object up first and, when it must act again, does so under a new key.
    stripe_key_reuse_margin_seconds: int = 20 * 3600
    # A recipient whose transfer fails (an account restricted for a while) is retried in rounds,
    # the first after transfer_retry_initial_seconds, doubling up to transfer_retry_maximum_seconds,
    # transfer_rounds_max rounds in all; then the payment goes to review.
    transfer_rounds_max: int = 8
    transfer_retry_initial_seconds: float = 60.0
    transfer_retry_maximum_seconds: float = 3600.0
    # Continue as new once the history is this long (0: when Temporal suggests it).
    continue_as_new_history_length_max: int = 0


REFUND_REASONS = ("duplicate", "fraudulent", "requested_by_customer")
# Who gives a refund back (see workflows/payment_core.refund_parts and the README):
# proportional — the platform fee, the tax and every recipient return their exact share;
# platform_keeps_fee — tax and recipients return the refund first (in proportion, up to what
# each still holds from this payment); the platform fee pays only what they cannot cover.
REFUND_POLICIES = ("proportional", "platform_keeps_fee")
REFUND_POLICY_DEFAULT = "proportional"
# Who bears a lost dispute (README "Disputes"): platform — the platform (recipients keep what the
# capture owed them); recipients — each recipient gives back its share of the disputed amount
# (in proportion to what it still holds, by transfer reversal); fee and tax stay with the platform.
DISPUTE_LOSS_POLICIES = ("platform", "recipients")
DISPUTE_LOSS_POLICY_DEFAULT = "platform"


@dataclass
class PaymentInput:
    order_id: str
    amount: int
    currency: str
    customer: str
    payment_method: str
    capture_method: str = "automatic"  # "automatic" or "manual"
    recipients: list[SplitRecipientSpec] = field(default_factory=list)
    platform_fee_bps: int = 0
    tax_amount: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    request_fingerprint: str = ""
    request_id: str = ""
    description: str = ""
    timings: PaymentTimings = field(default_factory=PaymentTimings)
    refund_policy: str = REFUND_POLICY_DEFAULT
    dispute_loss_policy: str = DISPUTE_LOSS_POLICY_DEFAULT
    # Set by continue-as-new: the state carried over from the previous run.
    carried_state: PaymentState | None = None


@dataclass
class SplitPart:
    account_id: str
    amount: int
    role: str = "seller"


@dataclass
class ComputedSplit:
    """The exact split, computed once (ledger.money) and recorded in history."""

    total: int
    currency: str
    platform_fee: int
    tax: int
    parts: list[SplitPart] = field(default_factory=list)


TRANSFER_PENDING = "pending"
TRANSFER_SUCCEEDED = "succeeded"
TRANSFER_FAILED = "failed"
TRANSFER_IN_REVIEW = "in_review"


@dataclass
class TransferRecord:
    """One recipient's transfer: paid exactly once, booked exactly once.

    status: pending (not paid yet) | succeeded (Stripe has it; `transfer_id` set) | failed (the
    last round failed; retried next round) | in_review (rounds exhausted; an operator's retry
    pays it). `booked` is True once the ledger holds it.
    """

    account_id: str
    amount: int
    transfer_id: str | None = None
    status: str = TRANSFER_PENDING
    attempts: int = 0
    error: str = ""
    booked: bool = False


@dataclass
class StripeStep:
    """The durable record of one Stripe POST step (create, capture, cancel, a transfer).

    `key_index` 0 sends the step's base idempotency key; after Stripe saved an error under a
    key (`key_spent`), or once the key is older than the reuse margin, the next attempt first
    looks the object up and then acts under `<base>:<key_index + 1>`: one key per request.
    """

    first_attempt_unix_seconds: float
    attempts: int = 0
    key_index: int = 0
    key_spent: bool = False


REFUND_PENDING = "pending"
REFUND_SUCCEEDED = "succeeded"
REFUND_FAILED = "failed"
REFUND_STATUSES = (REFUND_PENDING, REFUND_SUCCEEDED, REFUND_FAILED)


@dataclass
class RefundRecovery:
    """One recipient's share of a refund, pulled back with a transfer reversal (its own Stripe step)."""

    account_id: str
    amount: int
    reversal_id: str | None = None
    booked: bool = False
    attempts: int = 0
    error: str = ""


@dataclass
class DisputeRecovery:
    """A recipient's share of a lost dispute, pulled back by transfer reversal (policy `recipients`)."""

    dispute_id: str
    account_id: str
    amount: int
    reversal_id: str | None = None
    booked: bool = False
    attempts: int = 0
    error: str = ""


@dataclass
class RefundRecord:
    """One refund: its exact parts, its Stripe refund, the recoveries from recipients.

    status: pending (Stripe has not confirmed it, or recoveries are still running) |
    succeeded (Stripe refunded the buyer and every recipient's share is back) | failed (Stripe
    refused it, or it failed after being accepted: the ledger booked it back).
    `booked`: the refund entry is in the ledger; `failure_booked`: its failure is too.
    """

    refund_id: str
    amount: int
    reason: str | None
    platform_fee: int
    tax: int
    recipients: list[SplitPart] = field(default_factory=list)
    status: str = REFUND_PENDING
    stripe_refund_id: str | None = None
    stripe_status: str | None = None
    recoveries: list[RefundRecovery] = field(default_factory=list)
    booked: bool = False
    failure_reason: str | None = None
    failure_booked: bool = False
    request_id: str = ""
    created_unix_seconds: float = 0.0


@dataclass
class PaymentState:
    """The one serialisable object that is the workflow's state (returned by the `state` query)."""

    payment_id: str
    order_id: str
    status: str
    amount: int
    currency: str
    customer: str
    capture_method: str
    amount_capturable: int = 0
    amount_captured: int = 0
    amount_refunded: int = 0
    stripe_fee: int = 0
    stripe_payment_intent_id: str | None = None
    # Stripe's fee on a charge as a PaymentIntent response reported it (expanded balance
    # transaction), and which charge: the fee is then booked without a charge lookup.
    stripe_charge_fee: int | None = None
    stripe_charge_fee_charge_id: str | None = None
    stripe_charge_id: str | None = None
    stripe_status: str | None = None
    split: ComputedSplit | None = None
    transfers: list[TransferRecord] = field(default_factory=list)
    failure_code: str | None = None
    failure_message: str | None = None
    next_action_url: str | None = None
    review_reason: str | None = None
    processed_event_ids: list[str] = field(default_factory=list)
    history: list[str] = field(default_factory=list)
    transition_count: int = 0
    # Everything below survives continue-as-new (deadlines as unix seconds, counters, steps).
    charge_requested: bool = False
    fee_booked: bool = False
    review_status_before: str | None = None
    action_deadline_unix_seconds: float | None = None
    authorization_deadline_unix_seconds: float | None = None
    settlement_deadline_unix_seconds: float | None = None
    settlement_polled: bool = False
    settlement_hint: bool = False
    dispute_window_ends_unix_seconds: float | None = None
    processing_polls: int = 0
    transfer_rounds: int = 0
    transfer_next_round_unix_seconds: float | None = None
    unknown_status_polls: int = 0
    stripe_steps: dict[str, StripeStep] = field(default_factory=dict)
    continued_as_new: int = 0
    # Disputes booked in the ledger: dispute id -> the last stage booked (opened, won, lost).
    disputes: dict[str, str] = field(default_factory=dict)
    # Refunds in the order they were asked for (failed ones stay, for the record).
    refunds: list[RefundRecord] = field(default_factory=list)
    # The status before the first refund was booked (where a failed refund returns the payment).
    status_before_refunds: str | None = None
    # Recipients' shares of lost disputes to pull back (dispute loss policy `recipients`).
    dispute_recoveries: list[DisputeRecovery] = field(default_factory=list)
    # The status of the dispute opened last (Stripe's word: needs_response, won, lost, ...).
    dispute_status: str | None = None


@dataclass
class CaptureRequest:
    amount: int | None = None
    request_id: str = ""


@dataclass
class CancelRequest:
    reason: str = "requested_by_customer"
    request_id: str = ""


@dataclass
class RefundRequest:
    """A refund asked for through the API. `refund_id` is Penny's id, derived by the API from the
    request's Idempotency-Key, so a retried request names the same refund (and gets it back)."""

    refund_id: str
    amount: int | None = None  # None: all that remains
    reason: str | None = None
    request_id: str = ""


RESOLUTIONS = ("captured", "authorized", "failed", "canceled", "retry")


@dataclass
class ResolveReviewRequest:
    """An operator's resolution of NEEDS_REVIEW: one of RESOLUTIONS.

    `retry` resumes where the payment stopped (what Stripe says decides where that is);
    the others assert an outcome, allowed only when Stripe's state agrees.
    """

    resolution: str
    note: str = ""
    operator: str = ""


@dataclass
class StripeEventSignal:
    """A Stripe webhook event as delivered to the workflow (the webhook intake builds it)."""

    event_id: str
    type: str
    created: int
    object_id: str
    object_type: str
    status: str | None = None
    amount: int | None = None
    amount_received: int | None = None
    amount_capturable: int | None = None
    amount_refunded: int | None = None
    data: dict[str, str] = field(default_factory=dict)
