"""POST /webhooks/stripe: verify, store first, dedupe, deliver as a workflow signal.

Order of work for one request, each step only after the previous one succeeded:
1. Read the raw body (at most WEBHOOK_BODY_BYTES_MAX; more is 413).
2. Verify `Stripe-Signature` on the raw bytes (`api.webhook_signature`): missing, malformed,
   mismatching, stale or future → 400, nothing stored, counted by reason.
3. Parse the event (id and type required) → otherwise 400, nothing stored.
4. Insert into the inbox (`webhook_events`, event id unique). A repeated event id is a
   duplicate: 200 and nothing more, unless the first delivery has not succeeded yet, in
   which case this retry of Stripe's is also a retry of our delivery.
5. Route the event to its payment(s) and signal their workflows (`activities.webhooks`).
   Temporal (or Stripe, for payout routing) unreachable → 503 so Stripe retries; the event
   stays stored and the relay delivers it as well.

Nothing here answers 500: an unexpected failure after the event is stored is a 503 (the
event is safe and will be delivered), before it is stored a 503 too (Stripe retries).

The app wires it with `app.include_router(webhooks.router)`. It uses the app's
`state.engine`, `state.temporal_client()` (or `state.temporal`) and `state.settings`.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from sqlalchemy.exc import SQLAlchemyError
from temporalio.client import Client

from activities.webhook_types import STATUS_RECEIVED
from activities.webhooks import (
    PayloadInvalid,
    ProcessOutcome,
    StripePayoutLookup,
    WebhookProcessor,
    parse_event,
    store_event,
)
from api.errors import ERROR_RESPONSES, ApiError, invalid_request, json_response
from api.webhook_signature import SIGNATURE_TOLERANCE_SECONDS, SignatureError, verify
from penny import webhook_metrics as metrics
from penny.settings import Settings

logger = logging.getLogger("penny.api.webhooks")

WEBHOOK_PATH = "/webhooks/stripe"
# Stripe's event payloads are a few kilobytes; the API's edge limit (PENNY_MAX_BODY_BYTES) applies first.
WEBHOOK_BODY_BYTES_MAX = 262_144
SIGNATURE_HEADER = "Stripe-Signature"

router = APIRouter(tags=["webhooks"])


def _unavailable(message: str) -> ApiError:
    return ApiError(503, "api_error", "service_unavailable", message, headers={"Retry-After": "5"})


def _too_large() -> ApiError:
    metrics.REJECTED.labels("too_large").inc()
    return invalid_request(
        "request_too_large", f"The webhook body is larger than the limit of {WEBHOOK_BODY_BYTES_MAX} bytes.", None, 413
    )


def _declared_length(request: Request) -> int | None:
    value = request.headers.get("content-length")
    if value is None or not value.isdigit():
        return None
    return int(value)


def _processor(request: Request) -> WebhookProcessor:
    state = request.app.state
    processor: WebhookProcessor | None = getattr(state, "webhook_processor", None)
    if processor is None:
        settings: Settings = state.settings

        async def temporal() -> Client | None:
            # Read at call time: the app reconnects to Temporal lazily when it was down at start-up.
            provider = getattr(state, "temporal_client", None)
            if provider is not None:
                return await provider()  # type: ignore[no-any-return]
            return getattr(state, "temporal", None)

        processor = WebhookProcessor(state.engine, settings, temporal, StripePayoutLookup(settings), "api")
        state.webhook_processor = processor
    return processor


def _accepted(outcome: ProcessOutcome | None, duplicate: bool) -> Response:
    body: dict[str, Any] = {"received": True, "duplicate": duplicate}
    if outcome is not None:
        body["status"] = outcome.status
    return json_response(200, body)


@router.post(
    WEBHOOK_PATH,
    summary="Receive a Stripe webhook event (signed with Stripe-Signature)",
    responses={**ERROR_RESPONSES, 503: {"description": "Stored but not delivered yet: Stripe retries"}},
    include_in_schema=True,
)
async def receive_stripe_webhook(request: Request) -> Response:
    metrics.RECEIVED.inc()
    settings: Settings = request.app.state.settings
    declared = _declared_length(request)
    if declared is not None and declared > WEBHOOK_BODY_BYTES_MAX:
        raise _too_large()
    body = await request.body()
    if len(body) > WEBHOOK_BODY_BYTES_MAX:
        raise _too_large()
    try:
        verify(body, request.headers.get(SIGNATURE_HEADER), settings.webhook_secrets, int(time.time()))
    except SignatureError as error:
        metrics.REJECTED.labels(error.reason).inc()
        raise invalid_request("webhook_signature_invalid", error.message, SIGNATURE_HEADER) from None
    try:
        event, payload_text = parse_event(body)
    except PayloadInvalid as error:
        metrics.REJECTED.labels("payload_invalid").inc()
        raise invalid_request("webhook_payload_invalid", f"The event cannot be accepted: {error}.") from None
    label = metrics.type_label(event.type)
    metrics.VERIFIED.labels(label).inc()

    try:
        stored, row = await store_event(
            request.app.state.engine, event, payload_text, settings.webhook_relay_grace_seconds
        )
    except SQLAlchemyError as error:
        logger.warning("webhook %s not stored: %s", event.event_id, type(error).__name__)
        raise _unavailable("The event could not be stored; retry later.") from None
    if stored:
        metrics.STORED.labels(label).inc()
        metrics.DELAY_SECONDS.labels("received").observe(max(0.0, time.time() - event.created) if event.created else 0)
    else:
        metrics.DUPLICATES.labels(label).inc()
        if row.status != STATUS_RECEIVED:
            return _accepted(None, duplicate=True)

    try:
        outcome = await _processor(request).process(row, event)
    except Exception as error:  # stored: the relay delivers it; Stripe retries meanwhile
        logger.exception("webhook %s stored but not processed: %s", event.event_id, type(error).__name__)
        raise _unavailable("The event is stored but could not be processed yet; it will be retried.") from None
    if outcome.retry:
        raise _unavailable("The event is stored; it could not be delivered yet and will be retried.")
    return _accepted(outcome, duplicate=not stored)


__all__ = ["SIGNATURE_TOLERANCE_SECONDS", "WEBHOOK_BODY_BYTES_MAX", "WEBHOOK_PATH", "router"]
