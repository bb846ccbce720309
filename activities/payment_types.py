"""Inputs and outputs of the payment (state + ledger + outbox) activities.

Pure dataclasses, importable by the workflow sandbox.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from workflows.payment_models import ComputedSplit, RefundRecord, SplitRecipientSpec

TRANSITION_CONFLICT = "TransitionConflict"
INVALID_PAYMENT_REQUEST = "InvalidPaymentRequest"
# The ledger refused a posting (unbalanced, over a balance limit, a key reused with other
# postings): deterministic, so never retried.
LEDGER_REJECTED = "LedgerRejected"


@dataclass
class PreparePaymentInput:
    payment_id: str
    workflow_id: str
    order_id: str
    amount: int
    currency: str
    customer: str
    capture_method: str
    recipients: list[SplitRecipientSpec] = field(default_factory=list)
    platform_fee_bps: int = 0
    tax_amount: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    request_fingerprint: str = ""
    request_id: str = ""
    # Set (patch prepare-screens-v1): also run the risk check in the same transaction and
    # return it, one local activity fewer per payment. None: the workflow runs risk_check itself.
    payment_method: str | None = None


@dataclass
class PreparePaymentResult:
    split: ComputedSplit
    created: bool
    risk: RiskCheckResult | None = None


@dataclass
class RiskCheckInput:
    payment_id: str
    customer: str
    amount: int
    currency: str
    payment_method: str


@dataclass
class RiskCheckResult:
    outcome: str  # allow | review | block
    reason: str


@dataclass
class LedgerAction:
    """One ledger write of a transition, built into postings by the activity (ledger.chart).

    kinds: authorization_hold, capture, release_hold, processing_fee, transfer, settlement,
    dispute_opened (amount + fee), dispute_won, dispute_lost (reference: the dispute id),
    refund (reference: Penny's refund id; `parts`: what each party gives back),
    refund_recovery (amount, account_id, reference: the refund id, reversal_id),
    refund_failed (reference, `parts`, `recovered`: what each recipient had given back),
    dispute_recovery (amount, account_id, reference: the dispute id, reversal_id).
    """

    kind: str
    amount: int = 0
    account_id: str = ""
    reference: str = ""
    fee: int = 0
    parts: ComputedSplit | None = None
    reversal_id: str = ""
    recovered: dict[str, int] = field(default_factory=dict)


@dataclass
class ReviewSpec:
    kind: str
    reason: str
    details: dict[str, str] = field(default_factory=dict)


@dataclass
class ReviewResolution:
    """Who resolved the payment's open review items, how and why (written with the transition)."""

    actor: str
    resolution: str
    note: str = ""


@dataclass
class PaymentRowUpdate:
    """Columns of the payments row a transition sets (None = unchanged)."""

    amount_capturable: int | None = None
    amount_captured: int | None = None
    amount_refunded: int | None = None
    stripe_payment_intent_id: str | None = None
    stripe_charge_id: str | None = None
    failure_code: str | None = None
    failure_message: str | None = None
    dispute_status: str | None = None


@dataclass
class TransitionInput:
    transition_id: str
    payment_id: str
    expected_status: str
    to_status: str
    event: str
    actor: str = "workflow"
    reason: str = ""
    stripe_event_id: str | None = None
    request_id: str | None = None
    ledger: list[LedgerAction] = field(default_factory=list)
    row: PaymentRowUpdate = field(default_factory=PaymentRowUpdate)
    review: ReviewSpec | None = None
    details: dict[str, str] = field(default_factory=dict)
    # Resolves the payment's open review items in the same transaction.
    resolution: ReviewResolution | None = None
    # The refund this transition books or updates (upserted into `refunds` in the same transaction).
    refund: RefundRecord | None = None
    # Only for moving to NEEDS_REVIEW: apply whatever the row's status is (a conflict between
    # Penny's view and the row is itself a reason for review), recording the real from-status.
    force: bool = False


@dataclass
class TransitionResult:
    applied: bool  # False when this transition id had already been applied (a retry)
    status: str
    ledger_entry_ids: list[int] = field(default_factory=list)


@dataclass
class RecordIgnoredInput:
    """An event that changed nothing (stale, duplicate, refused), recorded with the reason."""

    record_id: str
    payment_id: str
    status: str
    event: str
    reason: str
    actor: str = "stripe-webhook"
    stripe_event_id: str | None = None
    details: dict[str, str] = field(default_factory=dict)
