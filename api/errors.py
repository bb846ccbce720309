"""Stripe-shaped errors: every error response is `{"error": {"type", "code", "message", "param", "doc_url"}}`.

`ApiError` is raised anywhere in the API; the handlers here turn it, FastAPI's validation
errors and Starlette's HTTP errors (404, 405, ...) into that shape. Messages never echo a
request value (only parameter names), so nothing a client sent (say, a card number) can come
back in an error or reach a log through one.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

ErrorType = Literal[
    "invalid_request_error",
    "authentication_error",
    "permission_error",
    "idempotency_error",
    "api_error",
]


# Every code the API answers, with what it means; the README's "Errors" section has one anchor
# per code (`error-<code>`), which each error's `doc_url` points at (tests/test_api_units.py
# checks both directions). There is no published documentation site: the URL is the README's,
# relative to the repository.
ERROR_DOCS_URL = "README.md"
ERROR_CODES: dict[str, str] = {
    "action_not_allowed": "The review item does not allow this action; the message names those it allows.",
    "amount_too_large": "An amount over the configured maximum, or a refund over what remains.",
    "amount_too_small": "An amount below 1 minor unit.",
    "api_key_invalid": "The API key is unknown or revoked.",
    "api_key_missing": "No `Authorization: Bearer` API key.",
    "api_version_invalid": "The Penny-Version header names no version this API knows.",
    "body_invalid": "The body is not JSON, or is nested too deeply.",
    "card_data_not_allowed": "Raw card data anywhere in the request; send a payment method token.",
    "charge_already_refunded": "The payment is fully refunded already.",
    "charge_disputed": "The payment's charge is disputed; Stripe refunds no disputed charge.",
    "currency_not_supported": "The currency is not one of PENNY_SUPPORTED_CURRENCIES.",
    "delivery_pending": "The outbox delivery is still pending.",
    "idempotency_key_in_use": "A request with this Idempotency-Key is still running: retry after Retry-After.",
    "idempotency_key_invalid": "The Idempotency-Key header is empty or longer than 255 characters.",
    "idempotency_key_missing": "The POST has no Idempotency-Key header.",
    "idempotency_key_reused": "The Idempotency-Key was used with other parameters (named in the message).",
    "idempotency_unavailable": "The idempotency store could not be reached: retry with the same key.",
    "insufficient_role": "The API key's role may not call this endpoint.",
    "internal_error": "An unexpected error (logged with the Request-Id): retry with the same key.",
    "method_not_allowed": "The HTTP method is not allowed on this URL.",
    "order_conflict": "The order_id already has a payment made with other parameters.",
    "parameter_ambiguous": "A value was given in two forms (e.g. a recipient's amount and share_bps).",
    "parameter_invalid": "A parameter is out of its range or has the wrong form; the message says which rule.",
    "parameter_invalid_empty": "A parameter must not be empty.",
    "parameter_invalid_integer": "A parameter must be an integer (minor units and basis points are integers).",
    "parameter_missing": "A required parameter is missing.",
    "parameter_missing_one_of": "One of two parameters is required (e.g. a recipient's amount or share_bps).",
    "parameter_renamed": "A parameter was renamed before the first release; the message names its replacement.",
    "parameter_unknown": "The request has a parameter the endpoint does not take.",
    "parameters_exclusive": "Two parameters that exclude each other (starting_after and ending_before).",
    "parameter_unsupported": "A parameter Stripe has but Penny does not take; the message says what to use.",
    "payment_disbursement_pending": "The payment is still paying its recipients: retry shortly, same key.",
    "payment_not_captured": "The payment was not captured: cancel it instead of refunding.",
    "payment_state_conflict": "The payment's status does not allow this change.",
    "payment_update_failed": "The payment could not process the request.",
    "refund_in_progress": "Another refund of the payment is being made: retry shortly, same key.",
    "refund_refused": "Stripe refused the refund.",
    "request_invalid": "The request could not be processed.",
    "request_too_large": "The body is over PENNY_MAX_BODY_BYTES.",
    "resolution_refused": "Stripe's state contradicts the resolution, or it would move the payment back.",
    "resource_missing": "No such resource (or URL).",
    "review_already_resolved": "The review item is resolved already.",
    "risk_blocked": "The risk check blocked the payment.",
    "service_unavailable": "A dependency (Temporal, Postgres) is unavailable: retry with the same key.",
    "stripe_unavailable": "Stripe could not be read: retry with the same key.",
    "url_invalid": "The webhook endpoint URL is not allowed.",
    "webhook_endpoint_deleted": "The webhook endpoint is deleted.",
    "webhook_endpoints_limit": "At most 16 webhook endpoints.",
    "webhook_payload_invalid": "The Stripe webhook body is not a Stripe event.",
    "webhook_signature_invalid": "The Stripe-Signature header does not verify.",
    "window_in_future": "A reconciliation window ends more than a day in the future.",
    "window_invalid": "A reconciliation window ends before it starts.",
    "window_too_long": "A reconciliation window is longer than 31 days.",
}


def doc_url(code: str) -> str:
    anchor = f"error-{code}" if code in ERROR_CODES else "errors"
    return f"{ERROR_DOCS_URL}#{anchor}"


class ErrorDetail(BaseModel):
    type: ErrorType = Field(description="Category of the error, as in Stripe's API.")
    code: str = Field(description="Stable, machine-readable error code, e.g. `parameter_invalid`.")
    message: str = Field(description="Human-readable explanation. Never contains a value from the request.")
    param: str | None = Field(None, description="The offending parameter, in Stripe's `a[b][0]` notation.")
    doc_url: str = Field(description="Where the code is explained: the README's Errors section, one anchor per code.")


class ErrorResponse(BaseModel):
    error: ErrorDetail


# Refusals caused by work still running on the same payment (Stripe: "conflicted with another request
# that was executing concurrently"): no idempotent result is saved, so a retry with the same
# Idempotency-Key runs again once that work is done.
CONCURRENT_CONFLICT_CODES = frozenset({"payment_disbursement_pending", "refund_in_progress"})


class ApiError(Exception):
    """An error answered to the client. `status_code >= 500` means: safe to retry, nothing stored;
    so does a code in CONCURRENT_CONFLICT_CODES."""

    def __init__(
        self,
        status_code: int,
        error_type: ErrorType,
        code: str,
        message: str,
        param: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status_code = status_code
        self.detail = ErrorDetail(type=error_type, code=code, message=message, param=param, doc_url=doc_url(code))
        self.headers = dict(headers or {})

    @property
    def saved_under_key(self) -> bool:
        """Whether the idempotency layer keeps this answer for the request's key."""
        return self.status_code < 500 and self.detail.code not in CONCURRENT_CONFLICT_CODES

    def body(self) -> dict[str, Any]:
        return {"error": self.detail.model_dump()}

    def response(self) -> Response:
        return json_response(self.status_code, self.body(), self.headers)


def json_text(payload: Any) -> str:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False)


def json_response(status_code: int, payload: Any, headers: Mapping[str, str] | None = None) -> Response:
    return Response(
        json_text(payload), status_code=status_code, headers=dict(headers or {}), media_type="application/json"
    )


def invalid_request(code: str, message: str, param: str | None = None, status_code: int = 400) -> ApiError:
    return ApiError(status_code, "invalid_request_error", code, message, param)


def resource_missing(kind: str, param: str = "id") -> ApiError:
    return ApiError(404, "invalid_request_error", "resource_missing", f"No such {kind}.", param)


def service_unavailable(what: str) -> ApiError:
    return ApiError(
        503,
        "api_error",
        "service_unavailable",
        f"{what} is unavailable right now; retry the request with the same Idempotency-Key.",
        headers={"Retry-After": "1"},
    )


INTERNAL_ERROR = ApiError(500, "api_error", "internal_error", "An unexpected error occurred; it has been logged.")


def _example(error_type: str, code: str, message: str, param: str | None) -> dict[str, Any]:
    body = {"type": error_type, "code": code, "message": message, "param": param, "doc_url": doc_url(code)}
    return {"application/json": {"example": {"error": body}}}


def _documented(description: str, error_type: str, code: str, message: str, param: str | None = None) -> dict[str, Any]:
    content = _example(error_type, code, message, param)
    return {"model": ErrorResponse, "description": description, "content": content}


# Every documented route answers errors in this shape; each response shows an example.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: _documented(
        "Invalid request (parameters, card data, Idempotency-Key, Penny-Version)",
        "invalid_request_error",
        "parameter_renamed",
        "tax was replaced by tax_amount: tax in minor units, included in amount.",
        "tax",
    ),
    401: _documented("Missing or invalid API key", "authentication_error", "api_key_invalid", "Invalid API key."),
    403: _documented(
        "The API key's role may not call this endpoint",
        "permission_error",
        "insufficient_role",
        "This endpoint needs a merchant key.",
    ),
    404: _documented("No such resource", "invalid_request_error", "resource_missing", "No such payment.", "id"),
    413: _documented(
        "Request body over the limit",
        "invalid_request_error",
        "request_too_large",
        "The request body is larger than the limit of 65536 bytes.",
    ),
    "4XX": _documented(
        "Other client error", "invalid_request_error", "method_not_allowed", "This method is not allowed."
    ),
    500: _documented(
        "Unexpected error, logged with the Request-Id (safe to retry with the same Idempotency-Key)",
        "api_error",
        "internal_error",
        "An unexpected error occurred; it has been logged.",
    ),
    503: _documented(
        "A dependency is unavailable; Retry-After says when to retry (same Idempotency-Key)",
        "api_error",
        "service_unavailable",
        "The payment engine is unavailable right now; retry the request with the same Idempotency-Key.",
    ),
    "5XX": _documented(
        "Other server error (safe to retry)", "api_error", "internal_error", "The server could not answer."
    ),
}
IDEMPOTENT_POST_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    409: _documented(
        "Idempotency-Key in use by a request in flight (retry after Retry-After), or a conflict",
        "idempotency_error",
        "idempotency_key_in_use",
        "A request with this Idempotency-Key is still being processed; retry after Retry-After.",
    ),
    422: _documented(
        "Idempotency-Key reused with different parameters",
        "idempotency_error",
        "idempotency_key_reused",
        "This Idempotency-Key was used with different parameters: amount.",
    ),
}


def stripe_param(location: Sequence[int | str]) -> str | None:
    """("body", "splits", 0, "share_bps") → "splits[0][share_bps]"."""
    parts = [str(part) for part in location if part not in ("body", "query", "path", "header", "[key]")]
    if not parts:
        return None
    return parts[0] + "".join(f"[{part}]" for part in parts[1:])


def _validation_error(error: Mapping[str, Any]) -> ApiError:
    location = tuple(error.get("loc", ()))
    error_kind = str(error.get("type", ""))
    if location[:1] == ("header",) and str(location[-1]).lower() == "idempotency-key":
        if error_kind == "missing":
            return invalid_request(
                "idempotency_key_missing",
                "This request requires an Idempotency-Key header (1 to 255 characters) so that retries are safe.",
                "Idempotency-Key",
            )
        return invalid_request(
            "idempotency_key_invalid", "The Idempotency-Key header must be 1 to 255 characters.", "Idempotency-Key"
        )
    param = stripe_param(location)
    # pydantic messages name the rule, not the input; custom validators prefix "Value error, ".
    detail = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if error_kind in UNIT_ERROR_KINDS:
        # Raised by api.models with the field it concerns in its context: a renamed, ambiguous or
        # unsupported parameter, named by its full path.
        field = (error.get("ctx") or {}).get("field")
        named = stripe_param((*location, field) if field else location)
        return invalid_request(error_kind, detail, named)
    if error_kind == "json_invalid":
        return invalid_request("body_invalid", "The request body is not valid JSON.")
    if error_kind == "missing":
        return invalid_request("parameter_missing", f"Missing required param: {param}.", param)
    if error_kind == "extra_forbidden":
        return invalid_request("parameter_unknown", f"Received unknown parameter: {param}.", param)
    if param == "amount" and error_kind in ("greater_than_equal", "greater_than"):
        return invalid_request("amount_too_small", "Amount must be at least 1 (minor units).", param)
    unit = _unit_hint(location)
    if error_kind in ("int_parsing", "int_type", "int_from_float"):
        return invalid_request("parameter_invalid_integer", f"Invalid integer for {param}: {detail}.{unit}", param)
    if error_kind in ("string_too_short",) and "min_length=1" in str(error.get("ctx", "")):
        return invalid_request("parameter_invalid_empty", f"{param} must not be empty.", param)
    if location[-1:] == ("metadata",) and error_kind == "too_long":
        detail = f"metadata can have at most {METADATA_KEYS_MAX_DOC} keys"
    return invalid_request("parameter_invalid", f"Invalid {param}: {detail}.{unit}", param)


UNIT_ERROR_KINDS = frozenset(
    {"parameter_renamed", "parameter_ambiguous", "parameter_unsupported", "parameter_missing_one_of"}
)
METADATA_KEYS_MAX_DOC = 50
# The unit of each money or rate parameter, said in every error about it: a value in the wrong
# unit's range (a fee of 20000 "bps") is refused with the unit spelled out.
_UNIT_HINTS = {
    "amount": " amount is in minor units of the currency (9999 is 99.99 USD).",
    "tax_amount": " tax_amount is in minor units of the currency, included in amount.",
    "application_fee_bps": " application_fee_bps is a rate in basis points, 0 to 10000 (1000 is 10 %), of amount "
    "net of tax_amount.",
    "share_bps": " share_bps is a rate in basis points, 0 to 10000 (2500 is 25 %); for a fixed sum give amount "
    "(minor units) instead.",
}


def _unit_hint(location: Sequence[int | str]) -> str:
    last = str(location[-1]) if location else ""
    return _UNIT_HINTS.get(last, "")


async def api_error_handler(request: Request, error: Exception) -> Response:
    assert isinstance(error, ApiError)
    return error.response()


async def validation_error_handler(request: Request, error: Exception) -> Response:
    assert isinstance(error, RequestValidationError)
    problems = list(error.errors())
    first = problems[0] if problems else {"type": "value_error", "loc": (), "msg": "invalid request"}
    return _validation_error(first).response()


async def http_error_handler(request: Request, error: Exception) -> Response:
    assert isinstance(error, StarletteHTTPException)
    headers = dict(error.headers or {})
    if error.status_code == 404:
        api_error = invalid_request("resource_missing", "Unrecognized request URL.", status_code=404)
    elif error.status_code == 405:
        api_error = invalid_request("method_not_allowed", "This method is not allowed on this URL.", status_code=405)
    elif error.status_code >= 500:
        api_error = ApiError(error.status_code, "api_error", "internal_error", "The server could not answer.")
    else:
        api_error = invalid_request(
            "request_invalid", "The request could not be processed.", status_code=error.status_code
        )
    api_error.headers.update(headers)
    return api_error.response()
