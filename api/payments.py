"""Payments endpoints: create (start-and-wait), read, list, audit trail, ledger, capture, cancel.

Reads come from Postgres (`payments`, `payment_events`, the ledger), which the workflow's
activities write in one transaction per transition; writes go to the order's workflow.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, is_dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from temporalio.client import Client

from api import idempotency, metrics
from api.auth import MerchantKey, ReaderKey
from api.edge import REQUEST_ID_SCOPE_KEY, penny_version_header
from api.errors import (
    ERROR_RESPONSES,
    IDEMPOTENT_POST_RESPONSES,
    ApiError,
    invalid_request,
    json_response,
    json_text,
    resource_missing,
    service_unavailable,
)
from api.limits import check_payment_create
from api.models import (
    CUSTOMER_LENGTH_MAX,
    CUSTOMER_PATTERN,
    EXPANDABLE_PAYMENT_FIELDS,
    PAGE_SIZE_DEFAULT,
    PAGE_SIZE_MAX,
    PAYMENT_ID_LENGTH_MAX,
    PAYMENT_ID_PATTERN,
    ApiPaymentStatus,
    CancelCreate,
    CaptureCreate,
    Payment,
    PaymentCreate,
    PaymentEventList,
    PaymentEventOut,
    PaymentList,
    RecipientOut,
    SplitOut,
)
from api.pagination import check_exclusive_cursors
from api.workflow_client import (
    OrderClosed,
    cancel_payment,
    capture_payment,
    start_payment,
    started_with_fingerprint,
)
from penny.keys import ApiKey
from penny.settings import Settings
from workflows.payment_models import (
    CancelRequest,
    CaptureRequest,
    PaymentInput,
    PaymentState,
    PaymentTimings,
    SplitRecipientSpec,
    workflow_id_for_order,
)

router = APIRouter(prefix="/v1", tags=["payments"], dependencies=[Depends(penny_version_header)])

IDEMPOTENCY_KEY_PATTERN = r"^[\x21-\x7e]+$"  # visible ASCII, as Stripe


def _engine(request: Request) -> AsyncEngine:
    return request.app.state.engine  # type: ignore[no-any-return]


def _settings(request: Request) -> Settings:
    return request.app.state.settings  # type: ignore[no-any-return]


async def _temporal(request: Request) -> Client:
    client = await request.app.state.temporal_client()
    if client is None:
        raise service_unavailable("The payment engine")
    return client  # type: ignore[no-any-return]


Engine = Annotated[AsyncEngine, Depends(_engine)]
AppSettings = Annotated[Settings, Depends(_settings)]
Temporal = Annotated[Client, Depends(_temporal)]
IdempotencyKey = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=idempotency.IDEMPOTENCY_KEY_LENGTH_MAX,
        pattern=IDEMPOTENCY_KEY_PATTERN,
        description="Required on every POST: a unique key per logical request (e.g. a UUID). A retry with the "
        "same key and body replays the stored response (`Idempotent-Replayed: true`).",
    ),
]
PaymentId = Annotated[str, Path(max_length=PAYMENT_ID_LENGTH_MAX, pattern=PAYMENT_ID_PATTERN, examples=["pay_1"])]


# ----------------------------------------------------------------------------- presenting


def api_status(status: str) -> str:
    """Workflow status → API status: CREATED and PROCESSING are both `processing`."""
    return "processing" if status in ("CREATED", "PROCESSING") else status.lower()


def _unix(moment: datetime | None) -> int:
    return int(moment.timestamp()) if moment is not None else int(time.time())


def split_out(split: Any) -> SplitOut | None:
    """The workflow's computed split (a dataclass, or its JSON in the payments row) in the API's
    unit-named fields: every amount in minor units, recipients in the request's order."""
    if split is None:
        return None
    value = asdict(split) if is_dataclass(split) and not isinstance(split, type) else split
    if not isinstance(value, dict) or not {"total", "currency", "platform_fee", "tax", "parts"} <= value.keys():
        return None
    split_value = SplitOut(
        amount=value["total"],
        currency=value["currency"],
        application_fee_amount=value["platform_fee"],
        tax_amount=value["tax"],
        recipients=[
            RecipientOut(account_id=part["account_id"], amount=part["amount"], role=part.get("role", "seller"))
            for part in value["parts"]
        ],
    )
    parts_sum = split_value.application_fee_amount + split_value.tax_amount
    parts_sum += sum(recipient.amount for recipient in split_value.recipients)
    assert parts_sum == split_value.amount, "a split's parts always sum to its amount"
    return split_value


# Expandable lists are left out of a payment unless `expand[]` asks for them, as in Stripe.
_UNEXPANDED = set(EXPANDABLE_PAYMENT_FIELDS)


def payment_from_row(row: Any) -> dict[str, Any]:
    return Payment(
        id=row.id,
        order_id=row.order_id,
        status=api_status(row.status),  # type: ignore[arg-type]
        amount=row.amount,
        currency=row.currency,
        customer=row.customer,
        capture_method=row.capture_method,
        amount_capturable=row.amount_capturable,
        amount_captured=row.amount_captured,
        amount_refunded=row.amount_refunded,
        split=split_out(row.split),
        metadata=row.metadata or {},
        failure_code=row.failure_code,
        failure_message=row.failure_message,
        stripe_payment_intent_id=row.stripe_payment_intent_id,
        dispute_status=row.dispute_status,
        created=_unix(row.created_at),
    ).model_dump(mode="json", exclude=_UNEXPANDED)


def payment_from_state(state: PaymentState, metadata: dict[str, str], created: datetime | None) -> dict[str, Any]:
    return Payment(
        id=state.payment_id,
        order_id=state.order_id,
        status=api_status(state.status),  # type: ignore[arg-type]
        amount=state.amount,
        currency=state.currency,
        customer=state.customer,
        capture_method=state.capture_method,  # type: ignore[arg-type]
        amount_capturable=state.amount_capturable,
        amount_captured=state.amount_captured,
        amount_refunded=state.amount_refunded,
        split=split_out(state.split),
        metadata=metadata,
        failure_code=state.failure_code,
        failure_message=state.failure_message,
        next_action={"url": state.next_action_url} if state.next_action_url else None,  # type: ignore[arg-type]
        stripe_payment_intent_id=state.stripe_payment_intent_id,
        dispute_status=state.dispute_status,
        created=_unix(created),
    ).model_dump(mode="json", exclude=_UNEXPANDED)


# ----------------------------------------------------------------------------- reading rows


async def _payment_row(engine: AsyncEngine, column: str, value: str) -> Any:
    assert column in ("id", "order_id")
    async with engine.connect() as connection:
        return (
            await connection.execute(text(f"SELECT * FROM payments WHERE {column} = :value"), {"value": value})
        ).one_or_none()


async def existing_payment(engine: AsyncEngine, payment_id: str) -> Any:
    row = await _payment_row(engine, "id", payment_id)
    if row is None:
        raise resource_missing("payment")
    return row


# ----------------------------------------------------------------------------- idempotent execution

Operation = Callable[[], Awaitable[tuple[int, dict[str, Any], str | None]]]


async def _run_idempotent(request: Request, api_key: ApiKey, key: str, body: Any, operation: Operation) -> Response:
    settings = _settings(request)
    engine = _engine(request)
    scope = idempotency.Scope(api_key.id, request.method, request.url.path, key)
    outcome = await idempotency.acquire(
        engine,
        scope,
        body,
        window_seconds=settings.idempotency_window_seconds,
        lock_timeout_seconds=settings.idempotency_lock_timeout_seconds,
    )
    route = getattr(request.scope.get("route"), "path", request.url.path)
    if isinstance(outcome, idempotency.Replay):
        metrics.IDEMPOTENT_REPLAYS.labels(route).inc()
        return Response(
            outcome.body_text,
            status_code=outcome.status_code,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )
    try:
        status_code, payload, resource_id = await operation()
    except ApiError as error:
        if not error.saved_under_key:
            await idempotency.release(engine, outcome)
            raise
        # A refusal decided by executing the request is its outcome: stored and replayed.
        await idempotency.complete(engine, outcome, error.status_code, json_text(error.body()), None)
        raise
    except BaseException:
        await idempotency.release(engine, outcome)
        raise
    body_text = json_text(payload)
    await idempotency.complete(engine, outcome, status_code, body_text, resource_id)
    return Response(
        body_text, status_code=status_code, media_type="application/json", headers={"Idempotent-Replayed": "false"}
    )


def _order_conflict() -> ApiError:
    metrics.CONFLICTS.labels("order_conflict").inc()
    return invalid_request(
        "order_conflict",
        "This order_id already has a payment created with different parameters; one order makes one payment.",
        "order_id",
        status_code=409,
    )


def _payment_input(
    body: PaymentCreate, fingerprint: str, request_id: str, timings: PaymentTimings | None
) -> PaymentInput:
    payment = PaymentInput(
        order_id=body.order_id,
        amount=body.amount,
        currency=body.currency.upper(),
        customer=body.customer,
        payment_method=body.payment_method,
        capture_method=body.capture_method,
        # The API's unit-named fields map onto the workflow's input (already unit-named) here.
        recipients=[
            SplitRecipientSpec(
                account_id=recipient.account_id,
                share_bps=recipient.share_bps,
                amount=recipient.amount,
                role=recipient.role,
            )
            for recipient in body.recipients
        ],
        platform_fee_bps=body.application_fee_bps,
        tax_amount=body.tax_amount,
        metadata=dict(body.metadata),
        request_fingerprint=fingerprint,
        request_id=request_id,
        description=body.description,
    )
    if timings is not None:
        payment.timings = timings
    return payment


# ----------------------------------------------------------------------------- endpoints


@router.post(
    "/payments",
    response_model=Payment,
    responses=IDEMPOTENT_POST_RESPONSES,
    summary="Create a payment and answer at its first milestone",
    description="Starts the order's payment (one per order_id) and answers once it is authorized, captured, "
    "requires action, failed, or after a bounded wait (`processing`). Requires `Idempotency-Key`.",
)
async def create_payment(
    request: Request,
    body: PaymentCreate,
    api_key: MerchantKey,
    idempotency_key: IdempotencyKey,
    engine: Engine,
    settings: AppSettings,
    client: Temporal,
) -> Response:
    check_payment_create(body, settings)
    raw_body = await request.json()
    fingerprint = idempotency.fingerprint(raw_body)
    request_id = request.scope.get(REQUEST_ID_SCOPE_KEY, "")

    async def operation() -> tuple[int, dict[str, Any], str | None]:
        existing = await _payment_row(engine, "order_id", body.order_id)
        if existing is not None and existing.request_fingerprint not in ("", fingerprint):
            raise _order_conflict()
        payment = _payment_input(body, fingerprint, request_id, request.app.state.payment_timings)
        payment.refund_policy = _settings(request).refund_policy
        payment.dispute_loss_policy = _settings(request).dispute_loss_policy
        try:
            state = await start_payment(client, settings, payment)
        except OrderClosed:
            existing = await _payment_row(engine, "order_id", body.order_id)
            if existing is None or existing.request_fingerprint != fingerprint:
                raise _order_conflict() from None
            return 200, payment_from_row(existing), existing.id
        row = await _payment_row(engine, "order_id", body.order_id)
        owner = row.request_fingerprint if row is not None and row.request_fingerprint else None
        if owner is None:
            owner = await started_with_fingerprint(client, workflow_id_for_order(body.order_id))
        if owner != fingerprint:
            raise _order_conflict()
        created = row.created_at if row is not None else None
        return 200, payment_from_state(state, dict(body.metadata), created), state.payment_id

    return await _run_idempotent(request, api_key, idempotency_key, raw_body, operation)


@router.get(
    "/payments",
    response_model=PaymentList,
    responses=ERROR_RESPONSES,
    summary="List payments, newest first (cursor pagination)",
)
async def list_payments(
    request: Request,
    api_key: ReaderKey,
    engine: Engine,
    status: Annotated[ApiPaymentStatus | None, Query()] = None,
    customer: Annotated[str | None, Query(max_length=CUSTOMER_LENGTH_MAX, pattern=CUSTOMER_PATTERN)] = None,
    created_gte: Annotated[
        int | None, Query(alias="created[gte]", ge=0, le=2**40, description="Unix time: created at or after.")
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
    starting_after: Annotated[
        str | None,
        Query(
            max_length=PAYMENT_ID_LENGTH_MAX, pattern=PAYMENT_ID_PATTERN, description="A payment id: the page after it."
        ),
    ] = None,
    ending_before: Annotated[
        str | None,
        Query(
            max_length=PAYMENT_ID_LENGTH_MAX,
            pattern=PAYMENT_ID_PATTERN,
            description="A payment id: the page before it (newer payments), still newest first.",
        ),
    ] = None,
) -> Response:
    check_exclusive_cursors(starting_after, ending_before)
    conditions = ["TRUE"]
    values: dict[str, Any] = {"limit": limit + 1}
    if status is not None:
        conditions.append("status = ANY(:statuses)")
        values["statuses"] = ["CREATED", "PROCESSING"] if status == "processing" else [status.upper()]
    if customer is not None:
        conditions.append("customer = :customer")
        values["customer"] = customer
    if created_gte is not None:
        conditions.append("created_at >= to_timestamp(:created_gte)")
        values["created_gte"] = created_gte
    # Newest first, by (created_at, id): ties in created_at are ordered by id, so a page boundary
    # never skips or repeats a payment.
    cursor_id, cursor_param = (ending_before, "ending_before") if ending_before else (starting_after, "starting_after")
    order = "DESC"
    async with engine.connect() as connection:
        if cursor_id is not None:
            cursor = (
                await connection.execute(text("SELECT created_at, id FROM payments WHERE id = :id"), {"id": cursor_id})
            ).one_or_none()
            if cursor is None:
                raise invalid_request("resource_missing", f"No such payment: {cursor_param}.", cursor_param)
            comparison = ">" if cursor_param == "ending_before" else "<"
            order = "ASC" if cursor_param == "ending_before" else "DESC"
            conditions.append(f"(created_at, id) {comparison} (:cursor_created, :cursor_id)")
            values.update(cursor_created=cursor.created_at, cursor_id=cursor.id)
        rows = (
            await connection.execute(
                text(
                    f"SELECT * FROM payments WHERE {' AND '.join(conditions)} "
                    f"ORDER BY created_at {order}, id {order} LIMIT :limit"
                ),
                values,
            )
        ).all()
    has_more = len(rows) > limit
    rows = list(rows[:limit])
    if order == "ASC":
        rows.reverse()
    page = PaymentList(
        url="/v1/payments", has_more=has_more, data=[Payment.model_validate(payment_from_row(row)) for row in rows]
    )
    return json_response(200, page.model_dump(mode="json", exclude={"data": {"__all__": _UNEXPANDED}}))


@router.get(
    "/payments/{payment_id}",
    response_model=Payment,
    response_model_exclude_none=False,
    responses=ERROR_RESPONSES,
    summary="Retrieve a payment (`expand[]=events`, `refunds`, `ledger_lines`)",
)
async def get_payment(
    payment_id: PaymentId,
    api_key: ReaderKey,
    engine: Engine,
    expand: Annotated[
        list[str] | None,
        Query(
            alias="expand[]",
            max_length=len(EXPANDABLE_PAYMENT_FIELDS),
            description="Lists to include, as Stripe's `expand[]`: `events`, `refunds`, `ledger_lines` (the first "
            f"{PAGE_SIZE_MAX} of each; its `url` pages further).",
        ),
    ] = None,
) -> Response:
    row = await existing_payment(engine, payment_id)
    payment = payment_from_row(row)
    for index, field in enumerate(expand or []):
        if field not in EXPANDABLE_PAYMENT_FIELDS:
            raise invalid_request(
                "parameter_invalid",
                f"This property cannot be expanded; expandable: {', '.join(EXPANDABLE_PAYMENT_FIELDS)}.",
                f"expand[{index}]",
            )
        payment[field] = (await _expanded(engine, payment_id, field)).model_dump(mode="json")
    return json_response(200, payment)


async def _expanded(engine: AsyncEngine, payment_id: str, field: str) -> BaseModel:
    # Imported here: api.refunds and api.ledger_views build on this module.
    from api.ledger_views import payment_ledger_page
    from api.refunds import payment_refunds_page

    if field == "events":
        return await payment_events_page(engine, payment_id, PAGE_SIZE_MAX, None, None)
    if field == "refunds":
        return await payment_refunds_page(engine, payment_id, PAGE_SIZE_MAX, None, None)
    assert field == "ledger_lines", field
    return await payment_ledger_page(engine, payment_id, PAGE_SIZE_MAX, None, None)


@router.get(
    "/payments/{payment_id}/events",
    response_model=PaymentEventList,
    responses=ERROR_RESPONSES,
    summary="The payment's audit trail, oldest first",
)
async def list_payment_events(
    payment_id: PaymentId,
    api_key: ReaderKey,
    engine: Engine,
    limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_MAX,
    starting_after: Annotated[int | None, Query(ge=0, le=2**62, description="An event id.")] = None,
    ending_before: Annotated[int | None, Query(ge=0, le=2**62, description="An event id.")] = None,
) -> Response:
    await existing_payment(engine, payment_id)
    page = await payment_events_page(engine, payment_id, limit, starting_after, ending_before)
    return json_response(200, page.model_dump(mode="json"))


async def payment_events_page(
    engine: AsyncEngine, payment_id: str, limit: int, starting_after: int | None, ending_before: int | None
) -> PaymentEventList:
    """One page of the payment's audit trail, oldest first (by event id)."""
    check_exclusive_cursors(starting_after, ending_before)
    if ending_before is not None:
        query = "id < :cursor ORDER BY id DESC"
        cursor = ending_before
    else:
        query = "id > :cursor ORDER BY id"
        cursor = starting_after or 0
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text(f"SELECT * FROM payment_events WHERE payment_id = :payment_id AND {query} LIMIT :limit"),
                {"payment_id": payment_id, "cursor": cursor, "limit": limit + 1},
            )
        ).all()
    has_more = len(rows) > limit
    rows = list(rows[:limit])
    if ending_before is not None:
        rows.reverse()
    events = [
        PaymentEventOut(
            id=row.id,
            payment_id=row.payment_id,
            from_status=row.from_status,
            to_status=row.to_status,
            event=row.event,
            actor=row.actor,
            reason=row.reason,
            stripe_event_id=row.stripe_event_id,
            request_id=row.request_id,
            ledger_entry_ids=list(row.ledger_entry_ids or []),
            details=row.details or {},
            created=_unix(row.created_at),
        )
        for row in rows
    ]
    return PaymentEventList(url=f"/v1/payments/{payment_id}/events", has_more=has_more, data=events)


async def _update_payment(
    request: Request,
    api_key: ApiKey,
    key: str,
    payment_id: str,
    raw_body: Any,
    call: Callable[[Client, str], Awaitable[PaymentState]],
) -> Response:
    engine = _engine(request)
    row = await existing_payment(engine, payment_id)  # 404 before the key: nothing executed
    client = await _temporal(request)

    async def operation() -> tuple[int, dict[str, Any], str | None]:
        state = await call(client, row.workflow_id)
        return 200, payment_from_state(state, row.metadata or {}, row.created_at), state.payment_id

    return await _run_idempotent(request, api_key, key, raw_body, operation)


async def _raw_json(request: Request) -> Any:
    raw = await request.body()
    return json.loads(raw) if raw.strip() else {}


@router.post(
    "/payments/{payment_id}/capture",
    response_model=Payment,
    responses=IDEMPOTENT_POST_RESPONSES,
    summary="Capture an authorized payment (all, or `amount`)",
)
async def capture(
    request: Request,
    payment_id: PaymentId,
    api_key: MerchantKey,
    idempotency_key: IdempotencyKey,
    body: Annotated[CaptureCreate | None, Body()] = None,
) -> Response:
    amount = body.amount if body is not None else None
    request_id = request.scope.get(REQUEST_ID_SCOPE_KEY, "")
    return await _update_payment(
        request,
        api_key,
        idempotency_key,
        payment_id,
        await _raw_json(request),
        lambda client, workflow_id: capture_payment(client, workflow_id, CaptureRequest(amount, request_id)),
    )


@router.post(
    "/payments/{payment_id}/cancel",
    response_model=Payment,
    responses=IDEMPOTENT_POST_RESPONSES,
    summary="Cancel an authorized payment or one that requires action",
)
async def cancel(
    request: Request,
    payment_id: PaymentId,
    api_key: MerchantKey,
    idempotency_key: IdempotencyKey,
    body: Annotated[CancelCreate | None, Body()] = None,
) -> Response:
    reason = body.reason if body is not None else "requested_by_customer"
    request_id = request.scope.get(REQUEST_ID_SCOPE_KEY, "")
    return await _update_payment(
        request,
        api_key,
        idempotency_key,
        payment_id,
        await _raw_json(request),
        lambda client, workflow_id: cancel_payment(client, workflow_id, CancelRequest(reason, request_id)),
    )
