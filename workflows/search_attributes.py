"""Penny's Temporal search attributes: operators filter payments by these in the Temporal UI,
for example `PaymentStatus="NEEDS_REVIEW"`. Sandbox-safe (no I/O)."""

from __future__ import annotations

from temporalio.common import SearchAttributeKey

PAYMENT_STATUS = SearchAttributeKey.for_keyword("PaymentStatus")
ORDER_ID = SearchAttributeKey.for_keyword("OrderId")
AMOUNT = SearchAttributeKey.for_int("Amount")
CURRENCY = SearchAttributeKey.for_keyword("Currency")
CUSTOMER_ID = SearchAttributeKey.for_keyword("CustomerId")
# Stripe's status of the payment's latest dispute (needs_response, under_review, won, lost, warning_*).
DISPUTE_STATUS = SearchAttributeKey.for_keyword("DisputeStatus")

ALL_SEARCH_ATTRIBUTES: tuple[SearchAttributeKey, ...] = (  # type: ignore[type-arg]
    PAYMENT_STATUS,
    ORDER_ID,
    AMOUNT,
    CURRENCY,
    CUSTOMER_ID,
    DISPUTE_STATUS,
)

# Name -> type as the `temporal` CLI spells it (`--search-attribute Name=Type`).
SEARCH_ATTRIBUTE_TYPES: dict[str, str] = {
    "PaymentStatus": "Keyword",
    "OrderId": "Keyword",
    "Amount": "Int",
    "Currency": "Keyword",
    "CustomerId": "Keyword",
    "DisputeStatus": "Keyword",
}
