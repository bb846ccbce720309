"""Request and response models of the Payments API. Every string has a length limit and a
charset, every number bounds; limits that depend on configuration (largest amount, supported
currencies) and on several fields at once (shares, fee + tax) are checked in `api.limits`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import JsonDict

ORDER_ID_LENGTH_MAX = 100
ORDER_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:\-]*$"
CUSTOMER_LENGTH_MAX = 100
CUSTOMER_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:@+\-]*$"
PAYMENT_METHOD_LENGTH_MAX = 100
PAYMENT_METHOD_PATTERN = r"^pm_[A-Za-z0-9_]+$"
ACCOUNT_ID_LENGTH_MAX = 100
ACCOUNT_ID_PATTERN = r"^acct_[A-Za-z0-9_]+$"
ROLE_PATTERN = r"^[a-z][a-z_]*$"
ROLE_LENGTH_MAX = 32
DESCRIPTION_LENGTH_MAX = 500
SPLITS_MAX = 10
BASIS_POINTS_MAX = 10_000  # 100 %
METADATA_KEYS_MAX = 50
METADATA_KEY_LENGTH_MAX = 40
METADATA_VALUE_LENGTH_MAX = 500
PAYMENT_ID_LENGTH_MAX = 64
PAYMENT_ID_PATTERN = r"^[A-Za-z0-9_]+$"
PAGE_SIZE_DEFAULT = 10
PAGE_SIZE_MAX = 100

CaptureMethod = Literal["automatic", "manual"]
ApiPaymentStatus = Literal[
    "processing",
    "requires_payment_method",
    "requires_action",
    "authorized",
    "captured",
    "settled",
    "failed",
    "canceled",
    "partially_refunded",
    "refunded",
    "disputed",
    "reversed",
    "needs_review",
]
CancellationReason = Literal["requested_by_customer", "duplicate", "fraudulent", "abandoned"]

# PostgreSQL text and jsonb cannot hold NUL: refused here rather than failing in the workflow.
NO_NUL_PATTERN = r"^[^\x00]*$"
MetadataKey = Annotated[str, Field(min_length=1, max_length=METADATA_KEY_LENGTH_MAX, pattern=NO_NUL_PATTERN)]
MetadataValue = Annotated[str, Field(max_length=METADATA_VALUE_LENGTH_MAX, pattern=NO_NUL_PATTERN)]

_STRICT = ConfigDict(extra="forbid", strict=True)


class SplitIn(BaseModel):
    """A recipient of the buyer's money: exactly one of `share_bps` or `amount`."""

    model_config = _STRICT

    account_id: str = Field(
        max_length=ACCOUNT_ID_LENGTH_MAX,
        pattern=ACCOUNT_ID_PATTERN,
        description="Stripe connected account, `acct_...`.",
    )
    share_bps: int | None = Field(
        None, ge=0, le=BASIS_POINTS_MAX, description="Share of what remains after fee and tax, in basis points."
    )
    amount: int | None = Field(None, ge=1, description="Fixed amount in minor units.")
    role: str = Field("seller", max_length=ROLE_LENGTH_MAX, pattern=ROLE_PATTERN, description="seller, driver, ...")

    @model_validator(mode="after")
    def _exactly_one_share(self) -> SplitIn:
        if (self.share_bps is None) == (self.amount is None):
            raise ValueError("give exactly one of share_bps or amount")
        return self


PAYMENT_CREATE_EXAMPLE: JsonDict = {
    "order_id": "order_1001",
    "amount": 9999,
    "currency": "usd",
    "customer": "cus_alice",
    "payment_method": "pm_card_visa",
    "capture_method": "automatic",
    "splits": [{"account_id": "acct_seller_1", "share_bps": 10000, "role": "seller"}],
    "platform_fee": 1000,
    "tax": 0,
    "metadata": {"cart": "c_1"},
}


class PaymentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra={"examples": [PAYMENT_CREATE_EXAMPLE]})

    order_id: str = Field(
        min_length=1,
        max_length=ORDER_ID_LENGTH_MAX,
        pattern=ORDER_ID_PATTERN,
        description="Your order id. One order id makes at most one payment.",
    )
    amount: int = Field(ge=1, description="Amount in minor units (cents). At most PENNY_MAX_AMOUNT_MINOR.")
    currency: str = Field(
        min_length=3,
        max_length=3,
        pattern=r"^[A-Za-z]{3}$",
        description="ISO 4217 code, one of PENNY_SUPPORTED_CURRENCIES (any case).",
    )
    customer: str = Field(
        min_length=1, max_length=CUSTOMER_LENGTH_MAX, pattern=CUSTOMER_PATTERN, description="Your customer id."
    )
    payment_method: str = Field(
        max_length=PAYMENT_METHOD_LENGTH_MAX,
        pattern=PAYMENT_METHOD_PATTERN,
        description="A payment method token (`pm_...`). Raw card data is refused.",
    )
    capture_method: CaptureMethod = "automatic"
    splits: list[SplitIn] = Field(
        min_length=1,
        max_length=SPLITS_MAX,
        description="Recipients of what remains after the platform fee and tax: fixed amounts, and shares in "
        "basis points of the rest (shares, if any, sum to 10000; without shares the amounts take all of it).",
    )
    platform_fee: int = Field(0, ge=0, le=BASIS_POINTS_MAX, description="Platform fee in basis points of amount.")
    tax: int = Field(0, ge=0, description="Tax in minor units, included in amount.")
    description: str = Field("", max_length=DESCRIPTION_LENGTH_MAX, pattern=NO_NUL_PATTERN)
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=METADATA_KEYS_MAX,
        description=f"Up to {METADATA_KEYS_MAX} keys of at most {METADATA_KEY_LENGTH_MAX} characters, "
        f"string values of at most {METADATA_VALUE_LENGTH_MAX}.",
    )


class CaptureCreate(BaseModel):
    model_config = _STRICT

    amount: int | None = Field(None, ge=1, description="Amount to capture; omit to capture all that is capturable.")


class CancelCreate(BaseModel):
    model_config = _STRICT

    reason: CancellationReason = "requested_by_customer"


class SplitPartOut(BaseModel):
    account_id: str
    amount: int
    role: str


class SplitOut(BaseModel):
    total: int
    currency: str
    platform_fee: int
    tax: int
    parts: list[SplitPartOut]


class NextAction(BaseModel):
    type: Literal["redirect_to_url"] = "redirect_to_url"
    url: str


class Payment(BaseModel):
    id: str = Field(description="Penny payment id, `pay_...`.")
    object: Literal["payment"] = "payment"
    order_id: str
    status: ApiPaymentStatus
    amount: int
    currency: str = Field(description="Upper-case ISO 4217 code.")
    customer: str
    capture_method: CaptureMethod
    amount_capturable: int
    amount_captured: int
    amount_refunded: int
    split: SplitOut | None = None
    metadata: dict[str, str]
    failure_code: str | None = None
    failure_message: str | None = None
    next_action: NextAction | None = None
    stripe_payment_intent_id: str | None = None
    dispute_status: str | None = Field(
        None, description="Stripe's status of the payment's latest dispute (needs_response, won, lost, warning_*)."
    )
    created: int = Field(description="Unix time the payment was created.")


class PaymentList(BaseModel):
    object: Literal["list"] = "list"
    url: str
    has_more: bool
    data: list[Payment]


class PaymentEventOut(BaseModel):
    id: int
    object: Literal["payment_event"] = "payment_event"
    payment_id: str
    from_status: str | None
    to_status: str
    event: str
    actor: str
    reason: str
    stripe_event_id: str | None
    request_id: str | None
    ledger_entry_ids: list[int]
    details: dict[str, Any]
    created: int


class PaymentEventList(BaseModel):
    object: Literal["list"] = "list"
    url: str
    has_more: bool
    data: list[PaymentEventOut]


RefundReason = Literal["duplicate", "fraudulent", "requested_by_customer"]
RefundStatus = Literal["pending", "succeeded", "failed"]


class RefundCreate(BaseModel):
    model_config = _STRICT

    amount: int | None = Field(
        None, ge=1, description="Minor units to refund; omit to refund all that remains.", examples=[2500]
    )
    reason: RefundReason | None = Field(None, description="Why, as Stripe's refund reasons.")


class RefundPartOut(BaseModel):
    account_id: str
    amount: int = Field(description="Minor units this recipient gives back.")


class RefundParts(BaseModel):
    platform_fee_amount: int = Field(description="Minor units of the platform fee given back.")
    tax_amount: int = Field(description="Minor units of tax given back.")
    recipients: list[RefundPartOut]


class RefundRecoveryOut(BaseModel):
    account_id: str
    amount: int
    transfer_reversal: str | None = Field(None, description="Stripe transfer reversal id, once it landed.")
    recovered: bool


class Refund(BaseModel):
    id: str = Field(description="Penny refund id, `rf_...` (derived from the request's Idempotency-Key).")
    object: Literal["refund"] = "refund"
    payment: str
    amount: int
    currency: str
    reason: RefundReason | None = None
    status: RefundStatus = Field(
        description="pending: Stripe has not confirmed it or recipients' shares are still being recovered; "
        "succeeded; failed (Stripe refused it, or it failed later: see failure_reason)."
    )
    parts: RefundParts
    recoveries: list[RefundRecoveryOut]
    stripe_refund_id: str | None = None
    failure_reason: str | None = None
    created: int


class RefundList(BaseModel):
    object: Literal["list"] = "list"
    url: str
    has_more: bool
    data: list[Refund]


# ----------------------------------------------------------------------------- review queue

# `rev_` + the item's number. At most 12 digits (a trillion items): an id can never be a
# 13–19 digit, card-shaped run, which the edge would refuse in a path.
REVIEW_ID_PATTERN = r"^rev_[1-9][0-9]{0,11}$"
REVIEW_ID_LENGTH_MAX = 16
REVIEW_KIND_PATTERN = r"^[a-z][a-z_]*$"
REVIEW_KIND_LENGTH_MAX = 64
REVIEW_NOTE_LENGTH_MAX = 1000  # review_items.resolution_note and review_actions.note hold this much

ReviewStatus = Literal["open", "resolved"]
# The workflow's checked resolutions of a payment in review (workflows.payment_models.RESOLUTIONS),
# then what closes an item that needs no payment change. api.review_queue asserts the first
# group equals RESOLUTIONS.
ReviewActionName = Literal["captured", "authorized", "failed", "canceled", "retry", "acknowledged", "dismissed"]
REVIEW_ITEM_ACTIONS = ("acknowledged", "dismissed")
ReviewChannel = Literal["api", "cli"]


class ReviewResolve(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [{"action": "retry", "note": "Stripe is back; the capture is there"}]},
    )

    action: ReviewActionName = Field(
        description="For an item of a payment in review: `retry` (resume where it stopped) or an outcome "
        "Stripe must agree with (`captured`, `authorized`, `failed`, `canceled`). For any other item: "
        "`acknowledged` (handled outside Penny) or `dismissed` (nothing to do)."
    )
    note: str = Field(
        min_length=1,
        max_length=REVIEW_NOTE_LENGTH_MAX,
        pattern=NO_NUL_PATTERN,
        description="Why: kept on the item and in its audit trail.",
    )


class ReviewActionOut(BaseModel):
    id: int
    object: Literal["review_action"] = "review_action"
    action: ReviewActionName
    note: str
    actor: str = Field(description="Who: `operator:<API key name> (<key id>)`, or `operator:<name> (cli)`.")
    api_key: str | None = Field(None, description="The API key's id (`key_...`); null from the CLI.")
    via: ReviewChannel
    payment_status_before: ApiPaymentStatus | None = None
    payment_status_after: ApiPaymentStatus | None = None
    effect: str = Field(description="What the action did, in words.")
    request_id: str | None = None
    created: int


class Review(BaseModel):
    id: str = Field(description="`rev_<n>`.")
    object: Literal["review"] = "review"
    kind: str = Field(description="step_failed, processor_uncertain, transfer_failed, webhook_unrouted, ...")
    reason: str
    details: dict[str, Any] = Field(description="The step, the error, the Stripe ids and how to resume.")
    status: ReviewStatus
    payment: str | None = Field(None, description="The payment it concerns; null for e.g. an unrouted webhook.")
    created: int
    resolved_at: int | None = None
    resolution: str | None = Field(None, description="The action (or the Stripe event) that resolved it.")
    resolved_by: str | None = Field(None, description="`operator:...`, `stripe-webhook`, `poll`, ...")
    resolution_note: str | None = None
    actions: list[ReviewActionOut] = Field(description="Operators' actions on this item, oldest first.")


class ReviewList(BaseModel):
    object: Literal["list"] = "list"
    url: str
    has_more: bool
    data: list[Review]
