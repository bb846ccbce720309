"""Refund endpoints: create (a validated workflow update), list a payment's refunds, retrieve one.

A refund's id is derived from the payment, the caller's key and the request's Idempotency-Key
(`workflows.ids.refund_id_for_request`): a retried request names the same refund, and the
workflow answers it with the refund it already made, even when the stored API response was lost.
Reads come from the `refunds` table, which the workflow writes with each refund's ledger entries.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Path, Query, Request
from fastapi.responses import Response
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import MerchantKey, ReaderKey
from api.edge import REQUEST_ID_SCOPE_KEY, penny_version_header
from api.errors import ERROR_RESPONSES, IDEMPOTENT_POST_RESPONSES, json_response, resource_missing
from api.models import PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX, Refund, RefundCreate, RefundList
from api.pagination import check_exclusive_cursors
from api.payments import Engine, IdempotencyKey, PaymentId, _engine, _raw_json, _run_idempotent, _temporal, _unix
from api.payments import existing_payment as _existing_payment
from api.workflow_client import refund_payment
from workflows.ids import refund_id_for_request
from workflows.payment_models import RefundRecord, RefundRequest

router = APIRouter(prefix="/v1", tags=["refunds"], dependencies=[Depends(penny_version_header)])

REFUND_ID_REGEX = r"^rf_[a-z]{24}$"
RefundId = Annotated[str, Path(pattern=REFUND_ID_REGEX, examples=["rf_abcdefghijklmnopqrstuvwx"])]


def refund_from_record(record: RefundRecord, payment_id: str, currency: str, created: int) -> dict[str, Any]:
    return Refund(
        id=record.refund_id,
        payment=payment_id,
        amount=record.amount,
        currency=currency,
        reason=record.reason,  # type: ignore[arg-type]
        status=record.status,  # type: ignore[arg-type]
        parts={
            "application_fee_amount": record.platform_fee,
            "tax_amount": record.tax,
            "recipients": [{"account_id": part.account_id, "amount": part.amount} for part in record.recipients],
        },  # type: ignore[arg-type]
        recoveries=[
            {
                "account_id": item.account_id,
                "amount": item.amount,
                "transfer_reversal": item.reversal_id,
                "recovered": item.booked,
            }
            for item in record.recoveries
        ],  # type: ignore[list-item]
        stripe_refund_id=record.stripe_refund_id,
        failure_reason=record.failure_reason,
        created=created,
    ).model_dump(mode="json")


def refund_from_row(row: Any) -> dict[str, Any]:
    parts = row.parts
    return Refund(
        id=row.id,
        payment=row.payment_id,
        amount=row.amount,
        currency=row.currency,
        reason=row.reason,
        status=row.status,
        parts={
            "application_fee_amount": parts["platform_fee"],
            "tax_amount": parts["tax"],
            "recipients": parts["recipients"],
        },  # type: ignore[arg-type]
        recoveries=[
            {
                "account_id": item["account_id"],
                "amount": item["amount"],
                "transfer_reversal": item.get("reversal_id"),
                "recovered": bool(item.get("booked")),
            }
            for item in row.recoveries
        ],  # type: ignore[list-item]
        stripe_refund_id=row.stripe_refund_id,
        failure_reason=row.failure_reason,
        created=_unix(row.created_at),
    ).model_dump(mode="json")


@router.post(
    "/payments/{payment_id}/refunds",
    response_model=Refund,
    responses=IDEMPOTENT_POST_RESPONSES,
    summary="Refund a captured payment (all that remains, or `amount`)",
)
async def create_refund(
    request: Request,
    payment_id: PaymentId,
    api_key: MerchantKey,
    idempotency_key: IdempotencyKey,
    body: Annotated[RefundCreate | None, Body()] = None,
) -> Response:
    """Refused with a Stripe-shaped error, and nothing sent to Stripe, when the payment is not
    refundable (not captured: cancel it instead; disputed; fully refunded; still paying its
    recipients) or `amount` exceeds what remains. Partial refunds accumulate."""
    engine = _engine(request)
    row = await _existing_payment(engine, payment_id)  # 404 before the key: nothing executed
    client = await _temporal(request)
    refund_request = RefundRequest(
        refund_id=refund_id_for_request(payment_id, api_key.id, idempotency_key),
        amount=body.amount if body is not None else None,
        reason=body.reason if body is not None else None,
        request_id=request.scope.get(REQUEST_ID_SCOPE_KEY, ""),
    )

    async def operation() -> tuple[int, dict[str, Any], str | None]:
        record = await refund_payment(client, row.workflow_id, refund_request)
        created = int(record.created_unix_seconds) or _unix(None)
        return 200, refund_from_record(record, payment_id, row.currency, created), record.refund_id

    return await _run_idempotent(request, api_key, idempotency_key, await _raw_json(request), operation)


@router.get(
    "/payments/{payment_id}/refunds",
    response_model=RefundList,
    responses=ERROR_RESPONSES,
    summary="List a payment's refunds, oldest first",
)
async def list_payment_refunds(
    payment_id: PaymentId,
    api_key: ReaderKey,
    engine: Engine,
    limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
    starting_after: Annotated[str | None, Query(pattern=REFUND_ID_REGEX, description="A refund id.")] = None,
    ending_before: Annotated[str | None, Query(pattern=REFUND_ID_REGEX, description="A refund id.")] = None,
) -> Response:
    await _existing_payment(engine, payment_id)
    page = await payment_refunds_page(engine, payment_id, limit, starting_after, ending_before)
    return json_response(200, page.model_dump(mode="json"))


async def payment_refunds_page(
    engine: AsyncEngine, payment_id: str, limit: int, starting_after: str | None, ending_before: str | None
) -> RefundList:
    """One page of the payment's refunds, oldest first (by creation, then id)."""
    check_exclusive_cursors(starting_after, ending_before)
    if ending_before is not None:
        window = (
            "(created_at, id) < (SELECT created_at, id FROM refunds WHERE id = :cursor) "
            "ORDER BY created_at DESC, id DESC"
        )
    else:
        window = (
            "(CAST(:cursor AS text) IS NULL OR (created_at, id) > "
            "(SELECT created_at, id FROM refunds WHERE id = CAST(:cursor AS text))) ORDER BY created_at, id"
        )
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text(f"SELECT * FROM refunds WHERE payment_id = :payment_id AND {window} LIMIT :limit"),
                {"payment_id": payment_id, "cursor": ending_before or starting_after, "limit": limit + 1},
            )
        ).all()
    has_more = len(rows) > limit
    rows = list(rows[:limit])
    if ending_before is not None:
        rows.reverse()
    return RefundList(
        url=f"/v1/payments/{payment_id}/refunds",
        has_more=has_more,
        data=[Refund(**refund_from_row(row)) for row in rows],
    )


@router.get("/refunds/{refund_id}", response_model=Refund, responses=ERROR_RESPONSES, summary="Retrieve a refund")
async def get_refund(refund_id: RefundId, api_key: ReaderKey, engine: Engine) -> Response:
    async with engine.connect() as connection:
        row = (await connection.execute(text("SELECT * FROM refunds WHERE id = :id"), {"id": refund_id})).one_or_none()
    if row is None:
        raise resource_missing("refund")
    return json_response(200, refund_from_row(row))
