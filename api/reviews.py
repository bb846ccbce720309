"""Review queue endpoints (ops keys only): list, retrieve, resolve. The rules live in
`api.review_queue`, shared with `penny reviews ...`.

The operator recorded on a resolution is the API key (`operator:<key name> (<key id>)`): who
resolves is never taken from the request body.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import Response

from api import review_queue
from api.auth import OpsKey
from api.edge import REQUEST_ID_SCOPE_KEY
from api.errors import ERROR_RESPONSES, IDEMPOTENT_POST_RESPONSES, json_response, resource_missing
from api.models import (
    PAGE_SIZE_DEFAULT,
    PAGE_SIZE_MAX,
    PAYMENT_ID_LENGTH_MAX,
    PAYMENT_ID_PATTERN,
    REVIEW_ID_LENGTH_MAX,
    REVIEW_ID_PATTERN,
    REVIEW_KIND_LENGTH_MAX,
    REVIEW_KIND_PATTERN,
    Review,
    ReviewList,
    ReviewResolve,
    ReviewStatus,
)
from api.pagination import check_exclusive_cursors
from api.payments import Engine, IdempotencyKey, _engine, _raw_json, _run_idempotent, _temporal

router = APIRouter(prefix="/v1", tags=["reviews"])

ReviewId = Annotated[
    str, Path(max_length=REVIEW_ID_LENGTH_MAX, pattern=REVIEW_ID_PATTERN, examples=["rev_1"], description="`rev_<n>`.")
]


def _number(review_id: str) -> int:
    number = review_queue.review_number(review_id)
    if number is None:  # the path pattern lets only valid ids through
        raise resource_missing("review")
    return number


@router.get(
    "/reviews",
    response_model=ReviewList,
    responses=ERROR_RESPONSES,
    summary="List review items, newest first (cursor pagination)",
)
async def list_reviews(
    api_key: OpsKey,
    engine: Engine,
    kind: Annotated[
        str | None, Query(max_length=REVIEW_KIND_LENGTH_MAX, pattern=REVIEW_KIND_PATTERN, examples=["step_failed"])
    ] = None,
    status: Annotated[ReviewStatus | None, Query()] = None,
    payment: Annotated[
        str | None,
        Query(max_length=PAYMENT_ID_LENGTH_MAX, pattern=PAYMENT_ID_PATTERN, description="A payment id."),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
    starting_after: Annotated[
        str | None,
        Query(
            max_length=REVIEW_ID_LENGTH_MAX, pattern=REVIEW_ID_PATTERN, description="A review id: the page after it."
        ),
    ] = None,
    ending_before: Annotated[
        str | None,
        Query(
            max_length=REVIEW_ID_LENGTH_MAX, pattern=REVIEW_ID_PATTERN, description="A review id: the page before it."
        ),
    ] = None,
) -> Response:
    check_exclusive_cursors(starting_after, ending_before)
    items, has_more = await review_queue.list_reviews(
        engine,
        kind=kind,
        status=status,
        payment_id=payment,
        limit=limit,
        starting_after=_number(starting_after) if starting_after is not None else None,
        ending_before=_number(ending_before) if ending_before is not None else None,
    )
    page = ReviewList(url="/v1/reviews", has_more=has_more, data=items)
    return json_response(200, page.model_dump(mode="json"))


@router.get(
    "/reviews/{review_id}",
    response_model=Review,
    responses=ERROR_RESPONSES,
    summary="Retrieve a review item with its operators' actions",
)
async def get_review(review_id: ReviewId, api_key: OpsKey, engine: Engine) -> Response:
    review = await review_queue.get_review(engine, _number(review_id))
    return json_response(200, review.model_dump(mode="json"))


@router.post(
    "/reviews/{review_id}/resolve",
    response_model=Review,
    responses=IDEMPOTENT_POST_RESPONSES,
    summary="Resolve a review item (the payment workflow decides for a payment in review)",
    description="For an item of a payment in NEEDS_REVIEW, `action` is the workflow's checked resolution "
    "(`retry`, `captured`, `authorized`, `failed`, `canceled`): Stripe's state must agree (409 "
    "`resolution_refused` otherwise, 503 `stripe_unavailable` when Stripe cannot be read) and every "
    "open item of the payment is resolved with it. Any other item is closed with `acknowledged` or "
    "`dismissed`. A resolved item is final (409 `review_already_resolved`). Requires `Idempotency-Key`.",
)
async def resolve_review(
    request: Request,
    review_id: ReviewId,
    body: ReviewResolve,
    api_key: OpsKey,
    idempotency_key: IdempotencyKey,
) -> Response:
    engine = _engine(request)
    number = _number(review_id)
    await review_queue.get_review(engine, number)  # 404 before the key: nothing executed
    resolution = review_queue.Resolution(
        number=number,
        action=body.action,
        note=body.note,
        operator=review_queue.operator_for_key(api_key),
        request_key=review_queue.request_key_for_api(api_key, idempotency_key),
        request_id=request.scope.get(REQUEST_ID_SCOPE_KEY) or None,
    )

    async def operation() -> tuple[int, dict[str, Any], str | None]:
        review = await review_queue.resolve_review(engine, lambda: _temporal(request), resolution)
        return 200, review.model_dump(mode="json"), review.id

    return await _run_idempotent(request, api_key, idempotency_key, await _raw_json(request), operation)
