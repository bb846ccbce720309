"""Stripe-shaped errors: every error response is `{"error": {"type", "code", "message", "param"}}`.

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


class ErrorDetail(BaseModel):
    type: ErrorType = Field(description="Category of the error, as in Stripe's API.")
    code: str = Field(description="Stable, machine-readable error code, e.g. `parameter_invalid`.")
    message: str = Field(description="Human-readable explanation. Never contains a value from the request.")
    param: str | None = Field(None, description="The offending parameter, in Stripe's `a[b][0]` notation.")


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
        self.detail = ErrorDetail(type=error_type, code=code, message=message, param=param)
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

# Every documented route answers errors in this shape.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request (parameters, card data, Idempotency-Key)"},
    401: {"model": ErrorResponse, "description": "Missing or invalid API key"},
    403: {"model": ErrorResponse, "description": "The API key's role may not call this endpoint"},
    404: {"model": ErrorResponse, "description": "No such resource"},
    413: {"model": ErrorResponse, "description": "Request body over the limit"},
    "4XX": {"model": ErrorResponse, "description": "Other client error"},
    "5XX": {"model": ErrorResponse, "description": "Server or dependency error (safe to retry)"},
}
IDEMPOTENT_POST_RESPONSES: dict[int | str, dict[str, Any]] = {
    **ERROR_RESPONSES,
    409: {"model": ErrorResponse, "description": "Idempotency-Key in use by a request in flight, or a conflict"},
    422: {"model": ErrorResponse, "description": "Idempotency-Key reused with different parameters"},
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
    if error_kind == "json_invalid":
        return invalid_request("body_invalid", "The request body is not valid JSON.")
    if error_kind == "missing":
        return invalid_request("parameter_missing", f"Missing required param: {param}.", param)
    if error_kind == "extra_forbidden":
        return invalid_request("parameter_unknown", f"Received unknown parameter: {param}.", param)
    if param == "amount" and error_kind in ("greater_than_equal", "greater_than"):
        return invalid_request("amount_too_small", "Amount must be at least 1 (minor units).", param)
    if error_kind in ("int_parsing", "int_type", "int_from_float"):
        return invalid_request("parameter_invalid_integer", f"Invalid integer for {param}: {detail}.", param)
    if error_kind in ("string_too_short",) and "min_length=1" in str(error.get("ctx", "")):
        return invalid_request("parameter_invalid_empty", f"{param} must not be empty.", param)
    return invalid_request("parameter_invalid", f"Invalid {param}: {detail}.", param)


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
