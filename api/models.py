"""Request and response models of the Payments API. Every string has a length limit and a
charset, every number bounds; limits that depend on configuration (largest amount, supported
currencies) and on several fields at once (shares, fee + tax) are checked in `api.limits`."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic.json_schema import JsonDict
from pydantic_core import PydanticCustomError

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
# As Stripe's: a key may not contain square brackets (they would read as a nested parameter).
METADATA_KEY_PATTERN = r"^[^\x00\[\]]*$"
MetadataKey = Annotated[str, Field(min_length=1, max_length=METADATA_KEY_LENGTH_MAX, pattern=METADATA_KEY_PATTERN)]
MetadataValue = Annotated[str, Field(max_length=METADATA_VALUE_LENGTH_MAX, pattern=NO_NUL_PATTERN)]

_STRICT = ConfigDict(extra="forbid", strict=True)


class RecipientIn(BaseModel):
    """A recipient of the buyer's money: exactly one of `amount` (minor units) or `share_bps`."""

    model_config = _STRICT

    account_id: str = Field(
        max_length=ACCOUNT_ID_LENGTH_MAX,
        pattern=ACCOUNT_ID_PATTERN,
        description="Stripe connected account, `acct_...`.",
    )
    amount: int | None = Field(
        None, ge=1, description="Fixed amount in minor units of the currency (cents): 2500 is 25.00 USD."
    )
    share_bps: int | None = Field(
        None,
        ge=0,
        le=BASIS_POINTS_MAX,
        description="Share, in basis points (0 to 10000; 2500 is 25 %), of what remains after the application "
        "fee, the tax and the fixed amounts.",
    )
    role: str = Field("seller", max_length=ROLE_LENGTH_MAX, pattern=ROLE_PATTERN, description="seller, driver, ...")

    @model_validator(mode="after")
    def _exactly_one_share(self) -> RecipientIn:
        if self.share_bps is not None and self.amount is not None:
            raise PydanticCustomError(
                "parameter_ambiguous",
                "Give either amount (minor units) or share_bps (basis points) for a recipient, not both.",
                {"field": "amount"},
            )
        if self.share_bps is None and self.amount is None:
            raise PydanticCustomError(
                "parameter_missing_one_of",
                "Give a recipient either amount (minor units) or share_bps (basis points).",
                {"field": "amount"},
            )
        return self


# Request names that were replaced before the first release: each answers a 400
# `parameter_renamed` naming its replacement (no silent compatibility layer).
RENAMED_PAYMENT_PARAMETERS: dict[str, str] = {
    "platform_fee": "application_fee_bps",
    "tax": "tax_amount",
    "splits": "recipients",
}
RENAMED_HINTS: dict[str, str] = {
    "platform_fee": "the platform fee's rate, in basis points of amount net of tax_amount (1000 is 10 %)",
    "tax": "tax in minor units, included in amount",
    "splits": "the recipients, each with amount (minor units) or share_bps (basis points)",
}
# Names a Stripe user may send that Penny does not take (yet): 400 `parameter_unsupported`.
UNSUPPORTED_PAYMENT_PARAMETERS: dict[str, str] = {
    "application_fee_amount": "Penny takes the application fee as a rate: give application_fee_bps (basis points "
    "of amount net of tax_amount, 0 to 10000). The fee in minor units is answered as "
    "split.application_fee_amount.",
}


PAYMENT_CREATE_EXAMPLE: JsonDict = {
    "order_id": "order_1001",
    "amount": 9999,
    "currency": "usd",
    "customer": "cus_alice",
    "payment_method": "pm_card_visa",
    "capture_method": "automatic",
    "recipients": [{"account_id": "acct_seller_1", "share_bps": 10000, "role": "seller"}],
    "application_fee_bps": 1000,
    "tax_amount": 0,
    "metadata": {"cart": "c_1"},
}
PAYMENT_CREATE_EXAMPLE_SPLIT: JsonDict = {
    "order_id": "order_1002",
    "amount": 5000,
    "currency": "eur",
    "customer": "cus_bob",
    "payment_method": "pm_card_visa",
    "recipients": [
        {"account_id": "acct_driver_1", "amount": 1500, "role": "driver"},
        {"account_id": "acct_seller_2", "share_bps": 10000, "role": "seller"},
    ],
    "application_fee_bps": 1250,
    "tax_amount": 400,
}


def _reject_old_and_unsupported_names(data: Any) -> Any:
    if not isinstance(data, dict):
        return data
    for old, new in RENAMED_PAYMENT_PARAMETERS.items():
        if old in data:
            raise PydanticCustomError(
                "parameter_renamed",
                f"{old} was replaced by {new}: {RENAMED_HINTS[old]}.",
                {"field": old},
            )
    for name, advice in UNSUPPORTED_PAYMENT_PARAMETERS.items():
        if name in data:
            if name == "application_fee_amount" and "application_fee_bps" in data:
                raise PydanticCustomError(
                    "parameter_ambiguous",
                    "Give the application fee once: application_fee_bps (basis points), not also "
                    "application_fee_amount.",
                    {"field": name},
                )
            raise PydanticCustomError("parameter_unsupported", f"{name} is not supported. {advice}", {"field": name})
    return data


class PaymentCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        strict=True,
        json_schema_extra={"examples": [PAYMENT_CREATE_EXAMPLE, PAYMENT_CREATE_EXAMPLE_SPLIT]},
    )

    order_id: str = Field(
        min_length=1,
        max_length=ORDER_ID_LENGTH_MAX,
        pattern=ORDER_ID_PATTERN,
        description="Your order id. One order id makes at most one payment.",
    )
    amount: int = Field(
        ge=1,
        description="Amount in minor units of the currency (cents): 9999 is 99.99 USD. At most PENNY_MAX_AMOUNT_MINOR.",
    )
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
    recipients: list[RecipientIn] = Field(
        min_length=1,
        max_length=SPLITS_MAX,
        description="Who gets what remains after the application fee and tax: fixed amounts (minor units), and "
        "shares in basis points of the rest (shares, if any, sum to 10000; without shares the amounts take all "
        "of it).",
    )
    application_fee_bps: int = Field(
        0,
        ge=0,
        le=BASIS_POINTS_MAX,
        description="The platform's fee as a rate, in basis points (0 to 10000; 1000 is 10 %) of amount net of "
        "tax_amount, rounded half up. The fee in minor units is answered as split.application_fee_amount.",
    )
    tax_amount: int = Field(0, ge=0, description="Tax in minor units of the currency, included in amount.")
    description: str = Field("", max_length=DESCRIPTION_LENGTH_MAX, pattern=NO_NUL_PATTERN)
    metadata: dict[MetadataKey, MetadataValue] = Field(
        default_factory=dict,
        max_length=METADATA_KEYS_MAX,
        description=f"As Stripe's: up to {METADATA_KEYS_MAX} keys of at most {METADATA_KEY_LENGTH_MAX} characters, "
        f"string values of at most {METADATA_VALUE_LENGTH_MAX}.",
    )

    @model_validator(mode="before")
    @classmethod
    def _old_names(cls, data: Any) -> Any:
        return _reject_old_and_unsupported_names(data)


class CaptureCreate(BaseModel):
    model_config = _STRICT

    amount: int | None = Field(None, ge=1, description="Amount to capture; omit to capture all that is capturable.")


class CancelCreate(BaseModel):
    model_config = _STRICT

    reason: CancellationReason = "requested_by_customer"


class RecipientOut(BaseModel):
    account_id: str
    amount: int = Field(description="Minor units this recipient gets.")
    role: str


class SplitOut(BaseModel):
    """Where the payment's amount goes, in minor units; the parts always sum to `amount` exactly."""

    amount: int = Field(description="The amount split, in minor units.")
    currency: str
    application_fee_amount: int = Field(description="The platform's fee in minor units (from application_fee_bps).")
    tax_amount: int = Field(description="Tax in minor units, as requested.")
    recipients: list[RecipientOut] = Field(description="Each recipient's amount, in the request's order.")


class NextAction(BaseModel):
    type: Literal["redirect_to_url"] = "redirect_to_url"
    url: str


PAYMENT_EXAMPLE: JsonDict = {
    "id": "pay_ufnbjpsftxyilvzkniinoofn",
    "object": "payment",
    "order_id": "order_1001",
    "status": "captured",
    "amount": 9999,
    "currency": "USD",
    "customer": "cus_alice",
    "capture_method": "automatic",
    "amount_capturable": 0,
    "amount_captured": 9999,
    "amount_refunded": 0,
    "split": {
        "amount": 9999,
        "currency": "USD",
        "application_fee_amount": 1000,
        "tax_amount": 0,
        "recipients": [{"account_id": "acct_seller_1", "amount": 8999, "role": "seller"}],
    },
    "metadata": {"cart": "c_1"},
    "failure_code": None,
    "failure_message": None,
    "next_action": None,
    "stripe_payment_intent_id": "pi_qAx1K4ZTQs79RGvpFuuXr5ES",
    "dispute_status": None,
    "created": 1795320000,
}


class Payment(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [PAYMENT_EXAMPLE]})

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
    # Present only when asked for with `expand[]` (GET /v1/payments/{id}?expand[]=events&...):
    # the first page of each list, whose `url` pages further.
    events: PaymentEventList | None = Field(None, description="With `expand[]=events`: the audit trail.")
    refunds: RefundList | None = Field(None, description="With `expand[]=refunds`: the payment's refunds.")
    ledger_lines: LedgerEntryList | None = Field(
        None, description="With `expand[]=ledger_lines`: the payment's ledger entries and their postings."
    )


EXPANDABLE_PAYMENT_FIELDS = ("events", "refunds", "ledger_lines")


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


# ----------------------------------------------------------------------------- ledger lines


class PostingOut(BaseModel):
    account: str
    amount: int  # > 0 debits the account, < 0 credits it
    currency: str


class LedgerEntryOut(BaseModel):
    id: int
    object: Literal["ledger_entry"] = "ledger_entry"
    kind: str
    status: str
    description: str
    postings: list[PostingOut]
    metadata: dict[str, str]
    reverses_entry_id: int | None
    resolves_entry_id: int | None
    resolved_by_entry_id: int | None
    effective_at: int | None
    created: int = Field(description="Unix time the entry was booked (its effective time).")


class LedgerEntryList(BaseModel):
    object: Literal["list"] = "list"
    url: str
    has_more: bool
    data: list[LedgerEntryOut]


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
    application_fee_amount: int = Field(description="Minor units of the application fee given back.")
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


Payment.model_rebuild()
