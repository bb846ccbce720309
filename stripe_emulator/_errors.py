"""Stripe-shaped errors: `{"error": {"type", "code", "message", "param", ...}}` with Stripe's status codes.

Stripe omits an error's absent keys rather than sending null (its error schema makes every key
but `type` optional): a card decline carries no `param`, a 500 carries only `message` and
`type`. The emulator does the same, and never sends `request_log_url` (a Dashboard link that
only exists for live requests).

`saved` says whether an idempotent request that ends in this error has its response saved.
Stripe saves a response once execution began (declines, state conflicts, 500s) and not for
parameter validation failures.
"""

from __future__ import annotations

from typing import Any


class StripeError(Exception):
    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        code: str | None = None,
        param: str | None = None,
        saved: bool = True,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.code = code
        self.param = param
        self.saved = saved
        self.extra = extra or {}

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {
            "type": self.error_type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
        }
        if self.code:
            error["doc_url"] = f"https://stripe.com/docs/error-codes/{self.code.replace('_', '-')}"
        error.update(self.extra)
        # Absent keys are left out, as Stripe does; keys in alphabetical order, as Stripe sends them.
        return {"error": {key: error[key] for key in sorted(error) if error[key] is not None}}


def invalid_request(message: str, param: str | None = None, code: str | None = None) -> StripeError:
    """A parameter validation failure: 400, not saved under the idempotency key."""
    return StripeError(400, "invalid_request_error", message, code=code, param=param, saved=False)


def unexpected_state(
    message: str, code: str | None = "payment_intent_unexpected_state", param: str | None = None
) -> StripeError:
    """The object is in the wrong state for the operation: execution began, so it is saved."""
    return StripeError(400, "invalid_request_error", message, code=code, param=param, saved=True)


def missing_param(name: str) -> StripeError:
    return invalid_request(f"Missing required param: {name}.", param=name, code="parameter_missing")


def resource_missing(kind: str, object_id: str, param: str = "id") -> StripeError:
    error = StripeError(
        404, "invalid_request_error", f"No such {kind}: '{object_id}'", code="resource_missing", param=param
    )
    error.saved = False
    return error


def unknown_parameter(name: str) -> StripeError:
    return invalid_request(f"Received unknown parameter: {name}", param=name, code="parameter_unknown")


def api_error(message: str = "An unknown error occurred") -> StripeError:
    return StripeError(500, "api_error", message)


RATE_LIMIT_MESSAGE = "Too many requests hit the API too quickly. We recommend an exponential backoff of your requests."
RAW_CARD_MESSAGE = (
    "Sending credit card numbers directly to the Stripe API is generally unsafe. We suggest you use test tokens "
    "that map to the test card you are using, see https://stripe.com/docs/testing. To enable raw card data APIs "
    "in test mode, see https://support.stripe.com/questions/enabling-access-to-raw-card-data-apis."
)


def rate_limited() -> StripeError:
    return StripeError(429, "invalid_request_error", RATE_LIMIT_MESSAGE, code="rate_limit", saved=False)


def raw_card_data(param: str) -> StripeError:
    # Stripe answers 402 with an invalid_request_error for accounts without raw card data access.
    return StripeError(402, "invalid_request_error", RAW_CARD_MESSAGE, param=param, saved=False)
