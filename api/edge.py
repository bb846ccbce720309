"""The outermost layer of every HTTP request (pure ASGI, before routing).

In order: give the request an id (`Request-Id` header, like Stripe's), settle its API version
(`Penny-Version` header, dated like Stripe's; absent means the current one; echoed on the
response and recorded in the request's log line), refuse bodies over
the configured limit (413), refuse raw card data in the path, query string, Idempotency-Key
or body (400 `card_data_not_allowed`), turn any unhandled exception into a Stripe-shaped 500
without a stack trace, count requests and latency by route template, and write one log line per
request: its Request-Id, method, route template, status, duration and Penny-Version.

The card check runs before authentication, validation and routing, so a card number is
never parsed into a model, echoed in a validation error, logged or stored.
"""

from __future__ import annotations

import json
import logging
import secrets
import time
from typing import Annotated, Any

from fastapi import Header
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import card_data, metrics
from api.errors import INTERNAL_ERROR, ApiError, invalid_request
from penny.logs import bind_log_context, reset_log_context

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
# The API's versions, oldest first. A breaking change adds a dated version here and branches on
# `scope[API_VERSION_SCOPE_KEY]` where its shape differs; requests without the header get the
# newest. Nothing has been released yet, so there is one.
API_VERSIONS = ("2026-11-22",)
API_VERSION = API_VERSIONS[-1]
API_VERSION_HEADER = "Penny-Version"
API_VERSION_SCOPE_KEY = "penny.api_version"
API_VERSION_LENGTH_MAX = 32


async def penny_version_header(
    penny_version: Annotated[
        str | None,
        Header(
            alias=API_VERSION_HEADER,
            max_length=API_VERSION_LENGTH_MAX,
            description=f"The API version, a date (one of {', '.join(API_VERSIONS)}); absent: the newest. Echoed on "
            "the answer and recorded with the request's Request-Id in the API's log.",
            examples=[API_VERSION],
        ),
    ] = None,
) -> None:
    """Documents the header on a router's routes (`dependencies=[Depends(penny_version_header)]`);
    the middleware above has already checked it for every request."""


def api_version_invalid() -> ApiError:
    return invalid_request(
        "api_version_invalid",
        f"Unknown Penny-Version; this API knows: {', '.join(API_VERSIONS)} (omit the header for {API_VERSION}).",
        API_VERSION_HEADER,
    )


def _requested_version(scope: Scope) -> str | None:
    """The request's Penny-Version: the newest when absent, None when it names no known version."""
    for name, value in scope.get("headers", []):
        if name == b"penny-version":
            version = value.decode("latin-1").strip()
            return version if version in API_VERSIONS else None
    return API_VERSION


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
        # Every line logged while answering carries the request id (penny/logs.py).
        log_context = bind_log_context(request_id=request_id)
        version = _requested_version(scope)
        scope[API_VERSION_SCOPE_KEY] = version or API_VERSION
        status_code = 500
        response_started = False

        async def send_with_request_id(message: Message) -> None:
            nonlocal status_code, response_started
            if message["type"] == "http.response.start":
                status_code = message["status"]
                response_started = True
                headers = MutableHeaders(scope=message)
                headers.append(REQUEST_ID_HEADER, request_id)
                headers.append(API_VERSION_HEADER, scope[API_VERSION_SCOPE_KEY])
            await send(message)

        try:
            if version is None:
                await api_version_invalid().response()(scope, receive, send_with_request_id)
                return
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
            logger.exception("%s unhandled error answering %s %s", request_id, scope.get("method"), _route(scope))
            if not response_started:
                await INTERNAL_ERROR.response()(scope, receive, send_with_request_id)
        finally:
            route = _route(scope)
            elapsed_seconds = time.perf_counter() - began
            metrics.REQUESTS.labels(route, scope.get("method", ""), str(status_code)).inc()
            metrics.REQUEST_SECONDS.labels(route, scope.get("method", "")).observe(elapsed_seconds)
            # The route template, never the raw path or query: no request value reaches the log.
            logger.info(
                "%s %s %s %d %.0fms penny_version=%s",
                request_id,
                scope.get("method", ""),
                route,
                status_code,
                elapsed_seconds * 1000,
                scope[API_VERSION_SCOPE_KEY],
            )
            reset_log_context(log_context)

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
