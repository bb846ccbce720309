"""The outermost layer of every HTTP request (pure ASGI, before routing).

In order: give the request an id (`Request-Id` header, like Stripe's), refuse bodies over
the configured limit (413), refuse raw card data in the path, query string, Idempotency-Key
or body (400 `card_data_not_allowed`), turn any unhandled exception into a Stripe-shaped 500
without a stack trace, and count requests and latency by route template.

The card check runs before authentication, validation and routing, so a card number is
never parsed into a model, echoed in a validation error, logged or stored.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import card_data, metrics
from api.errors import INTERNAL_ERROR, ApiError, invalid_request

logger = logging.getLogger("penny.api")

REQUEST_ID_SCOPE_KEY = "penny.request_id"
# Bodies written by the processor, authenticated by their signature: Stripe objects carry card
# *fields* by design (payment_method_details.card.exp_month, last4) and never a full number,
# and their many ids, amounts and timestamps make digit-run false positives a real risk (the
# webhook benchmark saw 10 in 3,000 refused), which would make Stripe retry a valid event
# forever. Their bodies are not screened; a forged one fails the signature check and is not
# stored, and logs are still scrubbed.
PROCESSOR_PATHS = frozenset({"/webhooks/stripe"})
REQUEST_ID_HEADER = "Request-Id"


def request_too_large(limit_bytes: int) -> ApiError:
    return invalid_request(
        "request_too_large", f"The request body is larger than the limit of {limit_bytes} bytes.", status_code=413
    )


def card_data_rejected(param: str | None) -> ApiError:
    return invalid_request(
        "card_data_not_allowed",
        "Raw card data is not accepted: send a payment method token (pm_...) instead. "
        "The value was neither stored nor logged.",
        param,
    )


class _BodyTooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit_bytes: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit_bytes:
            raise _BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _check_card_data(scope: Scope, body: bytes) -> None:
    card_data.check_text(scope.get("path", ""), "path")
    card_data.check_query_string(scope.get("query_string", b"").decode("latin-1"))
    for name, value in scope.get("headers", []):
        if name == b"idempotency-key":
            card_data.check_text(value.decode("latin-1"), "header")
    if not body or scope.get("path") in PROCESSOR_PATHS:
        return
    text = body.decode("utf-8", errors="replace")
    card_data.check_text(text, "body")
    try:
        document: Any = json.loads(text)
    except ValueError:
        return  # not JSON: the raw text was checked; validation refuses it later
    card_data.check_json(document)


class EdgeMiddleware:
    def __init__(self, app: ASGIApp, *, max_body_bytes: int) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        began = time.perf_counter()
        request_id = f"req_{secrets.token_hex(12)}"
        scope[REQUEST_ID_SCOPE_KEY] = request_id
        status_code = 500
        response_started = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal status_code, response_started
            if message["type"] == "http.response.start":
                status_code = message["status"]
                response_started = True
                MutableHeaders(scope=message).append(REQUEST_ID_HEADER, request_id)
            await send(message)

        try:
            rejection, body = await self._screen(scope, receive)
            if rejection is not None:
                await rejection.response()(scope, receive, send_with_request_id)
                return

            delivered = False

            async def replay_body() -> Message:
                nonlocal delivered
                if not delivered:
                    delivered = True
                    return {"type": "http.request", "body": body, "more_body": False}
                return await receive()

            await self.app(scope, replay_body, send_with_request_id)
        except Exception:
            # The traceback goes to the log (scrubbed of card numbers), never to the client.
            logger.exception("unhandled error answering %s %s (%s)", scope.get("method"), _route(scope), request_id)
            if not response_started:
                await INTERNAL_ERROR.response()(scope, receive, send_with_request_id)
        finally:
            route = _route(scope)
            metrics.REQUESTS.labels(route, scope.get("method", ""), str(status_code)).inc()
            metrics.REQUEST_SECONDS.labels(route, scope.get("method", "")).observe(time.perf_counter() - began)

    async def _screen(self, scope: Scope, receive: Receive) -> tuple[ApiError | None, bytes]:
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            return request_too_large(self.max_body_bytes), b""
        try:
            body = await _read_body(receive, self.max_body_bytes)
        except _BodyTooLarge:
            return request_too_large(self.max_body_bytes), b""
        try:
            _check_card_data(scope, body)
        except card_data.CardDataFound as found:
            metrics.CARD_DATA_REJECTIONS.labels(found.location).inc()
            logger.warning("refused a request with card data in its %s (param %s)", found.location, found.param)
            return card_data_rejected(found.param), b""
        except card_data.NestingTooDeep:
            return invalid_request("body_invalid", "The request body is nested too deeply."), b""
        return None, body


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
