"""`penny.client`: a small typed Python client for the Penny API, sync and async, on httpx.

    from penny.client import PennyClient

    with PennyClient("sk_penny_...", base_url="http://127.0.0.1:8000") as penny:
        payment = penny.create_payment(
            order_id="order_1001", amount=9999, currency="usd", customer="cus_alice",
            payment_method="pm_card_visa", application_fee_bps=1000,
            recipients=[{"account_id": "acct_seller_1", "share_bps": 10000}],
        )
        for each in penny.list_payments(customer="cus_alice").auto_paging_iter():
            print(each["id"], each["status"], each["split"]["application_fee_amount"])

`AsyncPennyClient` has the same methods as coroutines (`async for each in page.auto_paging_iter()`).

Retries (one rule for every call, `RetryPolicy`):
- every POST is one *logical call* with one `Idempotency-Key`, generated once (or given) and
  sent again on each retry, so a retry can only replay the first attempt, never make a second
  payment or refund;
- retried: a timeout, a transport error (refused or dropped connection), 429, 5xx, and the 409s
  that mean "the same request, or other work on the same payment, is still running"
  (`idempotency_key_in_use`, `payment_disbursement_pending`, `refund_in_progress`). Any other
  4xx is the request's answer and is raised at once (`order_conflict` is a 409 too, and final);
- at most `retries_max` retries, waiting `backoff_initial_seconds` doubling up to
  `backoff_max_seconds`, with jitter, and at least the answer's `Retry-After` (capped at
  `retry_after_max_seconds`). When they are spent, the last error is raised.

Errors mirror the API's `{"error": {"type", "code", "message", "param", "doc_url"}}`: one class
per `type` (`InvalidRequestError`, `AuthenticationError`, `PermissionDeniedError`,
`IdempotencyError`, `APIError`), a few per `code` (`ResourceMissingError`, `CardDataNotAllowedError`,
`ConflictError` for the final 409s), and `APIConnectionError` when no answer came at all. Each
carries `status`, `code`, `param`, `doc_url` and the `request_id` (the `Request-Id` header, which
the API's log line for that request starts with).

Every request sends `Penny-Version: API_VERSION`, so the client keeps the shapes it was written
for when the API adds a newer version.

This module depends on httpx only (no server code): copy it into a service as it is.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import random
import secrets
import string
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Generic, Literal, NotRequired, TypedDict, TypeVar, cast

import httpx

logger = logging.getLogger("penny.client")

API_VERSION = "2026-11-22"
DEFAULT_BASE_URL = "http://127.0.0.1:8000"
CONNECT_TIMEOUT_SECONDS = 5.0
# POST /v1/payments answers at the payment's first milestone, at most
# PENNY_FIRST_MILESTONE_WAIT_SECONDS (20 s by default) after it arrives.
READ_TIMEOUT_SECONDS = 40.0
IDEMPOTENCY_KEY_LETTERS = 28
PAGE_LIMIT_MAX = 100
# 409s that are not the request's answer: the API saved nothing under the key, so the same
# request, sent again with the same key, runs (or replays) once the other work is done.
RETRYABLE_CONFLICT_CODES = frozenset({"idempotency_key_in_use", "payment_disbursement_pending", "refund_in_progress"})


# ----------------------------------------------------------------------------- the API's objects

T = TypeVar("T")


class Recipient(TypedDict):
    """A recipient in a payment request: exactly one of `amount` (minor units) or `share_bps`."""

    account_id: str
    amount: NotRequired[int]
    share_bps: NotRequired[int]
    role: NotRequired[str]


class SplitRecipient(TypedDict):
    account_id: str
    amount: int
    role: str


class Split(TypedDict):
    amount: int
    currency: str
    application_fee_amount: int
    tax_amount: int
    recipients: list[SplitRecipient]


class ListObject(TypedDict, Generic[T]):
    object: Literal["list"]
    url: str
    has_more: bool
    data: list[T]


class PaymentEvent(TypedDict):
    id: int
    object: Literal["payment_event"]
    payment_id: str
    from_status: str | None
    to_status: str
    event: str
    actor: str
    reason: str
    stripe_event_id: str | None
    request_id: str | None
    ledger_entry_ids: list[int]
    details: dict[str, Any]
    created: int


class Posting(TypedDict):
    account: str
    amount: int
    currency: str


class LedgerEntry(TypedDict):
    id: int
    object: Literal["ledger_entry"]
    kind: str
    status: str
    description: str
    postings: list[Posting]
    metadata: dict[str, str]
    reverses_entry_id: int | None
    resolves_entry_id: int | None
    resolved_by_entry_id: int | None
    effective_at: int | None
    created: int


class RefundRecipientPart(TypedDict):
    account_id: str
    amount: int


class RefundParts(TypedDict):
    application_fee_amount: int
    tax_amount: int
    recipients: list[RefundRecipientPart]


class RefundRecovery(TypedDict):
    account_id: str
    amount: int
    transfer_reversal: str | None
    recovered: bool


class Refund(TypedDict):
    id: str
    object: Literal["refund"]
    payment: str
    amount: int
    currency: str
    reason: str | None
    status: Literal["pending", "succeeded", "failed"]
    parts: RefundParts
    recoveries: list[RefundRecovery]
    stripe_refund_id: str | None
    failure_reason: str | None
    created: int


class Payment(TypedDict):
    id: str
    object: Literal["payment"]
    order_id: str
    status: str
    amount: int
    currency: str
    customer: str
    capture_method: Literal["automatic", "manual"]
    amount_capturable: int
    amount_captured: int
    amount_refunded: int
    split: Split | None
    metadata: dict[str, str]
    failure_code: str | None
    failure_message: str | None
    next_action: dict[str, str] | None
    stripe_payment_intent_id: str | None
    dispute_status: str | None
    created: int
    events: NotRequired[ListObject[PaymentEvent]]
    refunds: NotRequired[ListObject[Refund]]
    ledger_lines: NotRequired[ListObject[LedgerEntry]]


class LedgerAccount(TypedDict):
    object: Literal["ledger_account"]
    code: str
    type: str
    currency: str
    posted: int
    pending: int
    available: int
    must_not_go_negative: bool


class ReviewAction(TypedDict):
    id: int
    object: Literal["review_action"]
    action: str
    note: str
    actor: str
    api_key: str | None
    via: str
    payment_status_before: str | None
    payment_status_after: str | None
    effect: str
    request_id: str | None
    created: int


class Review(TypedDict):
    id: str
    object: Literal["review"]
    kind: str
    reason: str
    details: dict[str, Any]
    status: Literal["open", "resolved"]
    payment: str | None
    created: int
    resolved_at: int | None
    resolution: str | None
    resolved_by: str | None
    resolution_note: str | None
    actions: list[ReviewAction]


class WebhookEndpoint(TypedDict):
    id: str
    object: Literal["webhook_endpoint"]
    url: str
    enabled_events: list[str]
    description: str
    status: str
    previous_secret_expires: int | None
    created: int
    deleted: int | None
    secret: NotRequired[str]  # in the answers to create and roll_secret only


class WebhookEndpointDeleted(TypedDict):
    id: str
    object: Literal["webhook_endpoint"]
    deleted: Literal[True]


class WebhookDelivery(TypedDict):
    id: str
    object: Literal["webhook_delivery"]
    endpoint: str
    event: str
    event_type: str
    payment: str
    status: str
    attempts: int
    last_attempt: int | None
    last_status_code: int | None
    last_error: str | None
    next_attempt: int | None
    delivered: int | None
    redeliveries: int
    redelivered: int | None
    redelivered_by: str | None
    created: int


# ----------------------------------------------------------------------------- errors


class PennyError(Exception):
    """An error answered by the API (or, for APIConnectionError, no answer at all)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        error_type: str = "api_error",
        code: str | None = None,
        param: str | None = None,
        doc_url: str | None = None,
        request_id: str | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.type = error_type
        self.code = code
        self.param = param
        self.doc_url = doc_url
        self.request_id = request_id
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        where = f" (param {self.param})" if self.param else ""
        request = f" [{self.request_id}]" if self.request_id else ""
        return f"{self.status} {self.code}: {self.message}{where}{request}"


class InvalidRequestError(PennyError):
    """`invalid_request_error`: the request is wrong; sending it again will not help."""


class ResourceMissingError(InvalidRequestError):
    """`resource_missing` (404)."""


class CardDataNotAllowedError(InvalidRequestError):
    """`card_data_not_allowed`: raw card data in the request (the API neither stored nor logged it)."""


class ConflictError(InvalidRequestError):
    """A final 409: `order_conflict`, `payment_state_conflict`, `resolution_refused`, ..."""


class AuthenticationError(PennyError):
    """`authentication_error` (401): no API key, or an unknown or revoked one."""


class PermissionDeniedError(PennyError):
    """`permission_error` (403): the key's role may not call this endpoint."""


class IdempotencyError(PennyError):
    """`idempotency_error`: the key was used with other parameters (422), or is still in use (409)."""


class APIError(PennyError):
    """`api_error` (5xx): the API or a dependency failed; raised once the retries are spent."""


class APIConnectionError(PennyError):
    """No answer: a timeout or a transport error on every attempt."""


_ERRORS_BY_TYPE: dict[str, type[PennyError]] = {
    "invalid_request_error": InvalidRequestError,
    "authentication_error": AuthenticationError,
    "permission_error": PermissionDeniedError,
    "idempotency_error": IdempotencyError,
    "api_error": APIError,
}


def error_from_response(response: httpx.Response) -> PennyError:
    """The typed error of an error answer, from its `type` and `code`."""
    try:
        detail = response.json()["error"]
        assert isinstance(detail, dict)
    except (ValueError, KeyError, TypeError, AssertionError):
        detail = {"type": "api_error", "code": "unexpected_response", "message": f"HTTP {response.status_code}"}
    error_type = str(detail.get("type") or "api_error")
    code = detail.get("code")
    error_class = _ERRORS_BY_TYPE.get(error_type, APIError)
    if error_class is InvalidRequestError:
        if code == "resource_missing":
            error_class = ResourceMissingError
        elif code == "card_data_not_allowed":
            error_class = CardDataNotAllowedError
        elif response.status_code == 409:
            error_class = ConflictError
    return error_class(
        str(detail.get("message") or ""),
        status=response.status_code,
        error_type=error_type,
        code=code,
        param=detail.get("param"),
        doc_url=detail.get("doc_url"),
        request_id=response.headers.get("Request-Id"),
        headers=response.headers,
    )


# ----------------------------------------------------------------------------- retries


@dataclass(frozen=True)
class RetryPolicy:
    retries_max: int = 5
    backoff_initial_seconds: float = 0.5
    backoff_max_seconds: float = 8.0
    retry_after_max_seconds: float = 30.0

    def __post_init__(self) -> None:
        assert 0 <= self.retries_max <= 20, "retries are bounded"
        assert 0 < self.backoff_initial_seconds <= self.backoff_max_seconds


@dataclass(frozen=True)
class RetryEvent:
    """What the client is about to retry, and why (given to `on_retry`, and logged)."""

    method: str
    path: str
    retry: int  # 1 for the first retry
    reason: str  # "timeout", "transport: ConnectError", "409 idempotency_key_in_use", "503 service_unavailable"
    idempotency_key: str | None
    wait_seconds: float
    request_id: str | None


def _retry_after_seconds(response: httpx.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - datetime.now(UTC)).total_seconds())


def _retryable_answer(response: httpx.Response) -> str | None:
    """Why this answer is worth the same request again, or None when it is the request's answer."""
    status = response.status_code
    if status == 429 or status >= 500:
        return f"{status} {_code_of(response)}"
    if status == 409:
        code = _code_of(response)
        return f"409 {code}" if code in RETRYABLE_CONFLICT_CODES else None
    return None


def _code_of(response: httpx.Response) -> str:
    try:
        return str(response.json()["error"]["code"])
    except (ValueError, KeyError, TypeError):
        return "unknown"


def _wait_seconds(policy: RetryPolicy, retry: int, response: httpx.Response | None) -> float:
    """The backoff (doubling, with jitter), but never less than the answer's Retry-After (capped):
    a `Retry-After: 1` repeated on a key whose request died with its API process must not spend
    every retry within seconds while the key stays locked for PENNY_IDEMPOTENCY_LOCK_TIMEOUT_SECONDS
    (found by `penny chaos`: the API killed mid-request left six clients with a final 409)."""
    backoff = min(policy.backoff_max_seconds, policy.backoff_initial_seconds * 2 ** (retry - 1))
    backoff *= 0.5 + random.random() / 2  # jitter: concurrent clients do not retry in step
    retry_after = _retry_after_seconds(response) if response is not None else None
    if retry_after is not None:
        return max(min(retry_after, policy.retry_after_max_seconds), backoff)
    return backoff


def new_idempotency_key() -> str:
    """A fresh key: letters only, so it can never look like a card number (which the API refuses)."""
    return "idk_" + "".join(secrets.choice(string.ascii_lowercase) for _ in range(IDEMPOTENCY_KEY_LETTERS))


# ----------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class _Call:
    """One logical call: sent once, then again (identically, same key) on each retry."""

    method: str
    path: str
    params: list[tuple[str, str]] = field(default_factory=list)
    body: dict[str, Any] | None = None
    idempotency_key: str | None = None

    def headers(self) -> dict[str, str]:
        return {"Idempotency-Key": self.idempotency_key} if self.idempotency_key else {}


def _query(**values: object) -> list[tuple[str, str]]:
    params: list[tuple[str, str]] = []
    for name, value in values.items():
        if value is None:
            continue
        if isinstance(value, list | tuple):
            params.extend((f"{name}[]", str(item)) for item in value)
        else:
            params.append((name, str(value).lower() if isinstance(value, bool) else str(value)))
    return params


def _body(**values: object) -> dict[str, Any]:
    """The JSON body of a call: parameters left out when not given, so the API's defaults apply."""
    return {name: value for name, value in values.items() if value is not None}


def _post(path: str, body: dict[str, Any] | None, idempotency_key: str | None) -> _Call:
    return _Call("POST", path, body=body, idempotency_key=idempotency_key or new_idempotency_key())


def _list_params(
    limit: int | None, starting_after: str | int | None, ending_before: str | int | None
) -> dict[str, Any]:
    if limit is not None:
        assert 1 <= limit <= PAGE_LIMIT_MAX, f"limit is 1 to {PAGE_LIMIT_MAX}"
    return {"limit": limit, "starting_after": starting_after, "ending_before": ending_before}


def _payment_body(
    order_id: str,
    amount: int,
    currency: str,
    customer: str,
    payment_method: str,
    recipients: Sequence[Recipient],
    application_fee_bps: int | None,
    tax_amount: int | None,
    capture_method: str | None,
    description: str | None,
    metadata: Mapping[str, str] | None,
) -> dict[str, Any]:
    return _body(
        order_id=order_id,
        amount=amount,
        currency=currency,
        customer=customer,
        payment_method=payment_method,
        recipients=[dict(recipient) for recipient in recipients],
        application_fee_bps=application_fee_bps,
        tax_amount=tax_amount,
        capture_method=capture_method,
        description=description,
        metadata=dict(metadata) if metadata is not None else None,
    )


class _Base:
    def __init__(
        self,
        api_key: str,
        base_url: str,
        retry_policy: RetryPolicy | None,
        on_retry: Callable[[RetryEvent], None] | None,
        api_version: str,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retry_policy = retry_policy or RetryPolicy()
        self.on_retry = on_retry
        self._headers = {
            "Authorization": f"Bearer {api_key}",
            "Penny-Version": api_version,
            "User-Agent": "penny-client-python",
        }

    def _note_retry(self, event: RetryEvent) -> None:
        logger.info(
            "retrying %s %s (retry %d, %s) in %.2f s%s",
            event.method,
            event.path,
            event.retry,
            event.reason,
            event.wait_seconds,
            " with the same Idempotency-Key" if event.idempotency_key else "",
        )
        if self.on_retry is not None:
            self.on_retry(event)

    def _decide(
        self, call: _Call, retry: int, response: httpx.Response | None, failure: Exception | None
    ) -> tuple[Any, float | None]:
        """(the result or the error to raise, None) when done, or (None, seconds to wait) to retry."""
        if response is not None:
            if response.status_code < 400:
                return (response.json(), None) if response.content else ({}, None)
            reason = _retryable_answer(response)
            final_error: PennyError = error_from_response(response)
        else:
            assert failure is not None
            reason = (
                "timeout" if isinstance(failure, httpx.TimeoutException) else f"transport: {type(failure).__name__}"
            )
            final_error = APIConnectionError(
                f"No answer from the Penny API ({reason}) after {retry + 1} attempt(s): {failure}"
            )
        if reason is None or retry >= self.retry_policy.retries_max:
            return final_error, None
        wait = _wait_seconds(self.retry_policy, retry + 1, response)
        request_id = response.headers.get("Request-Id") if response is not None else None
        self._note_retry(RetryEvent(call.method, call.path, retry + 1, reason, call.idempotency_key, wait, request_id))
        return None, wait


def _timeout(timeout_seconds: float | httpx.Timeout | None) -> httpx.Timeout:
    if isinstance(timeout_seconds, httpx.Timeout):
        return timeout_seconds
    return httpx.Timeout(timeout_seconds or READ_TIMEOUT_SECONDS, connect=CONNECT_TIMEOUT_SECONDS)


# ----------------------------------------------------------------------------- pages


@dataclass
class Page(Generic[T]):
    """One page of a list (`data`, `has_more`); `auto_paging_iter()` yields it and every page
    after it: in the list's order, or, for a list read with `ending_before`, backwards from it."""

    data: list[T]
    has_more: bool
    url: str
    _next: Callable[[str], Page[T]] | None = None
    _backwards: bool = False

    def auto_paging_iter(self) -> Iterator[T]:
        page: Page[T] = self
        while True:
            yield from (reversed(page.data) if page._backwards else page.data)
            if not page.has_more or not page.data or page._next is None:
                return
            page = page._next(_cursor_of(page.data, page._backwards))


@dataclass
class AsyncPage(Generic[T]):
    """Page, for AsyncPennyClient: `async for item in page.auto_paging_iter()`."""

    data: list[T]
    has_more: bool
    url: str
    _next: Callable[[str], Awaitable[AsyncPage[T]]] | None = None
    _backwards: bool = False

    async def auto_paging_iter(self) -> AsyncIterator[T]:
        page: AsyncPage[T] = self
        while True:
            for item in reversed(page.data) if page._backwards else page.data:
                yield item
            if not page.has_more or not page.data or page._next is None:
                return
            page = await page._next(_cursor_of(page.data, page._backwards))


def _cursor_of(data: Sequence[object], backwards: bool) -> str:
    edge = data[0] if backwards else data[-1]
    return str(cast(Mapping[str, Any], edge)["id"])


def _backwards(call: _Call) -> bool:
    return any(name == "ending_before" for name, _ in call.params)


def _following_call(call: _Call, cursor: str) -> _Call:
    """The call for the page after `call`'s, in the direction it was read."""
    direction = "ending_before" if _backwards(call) else "starting_after"
    params = [(name, value) for name, value in call.params if name not in ("starting_after", "ending_before")]
    return _Call(call.method, call.path, [*params, (direction, cursor)])


# ----------------------------------------------------------------------------- sync client


class PennyClient(_Base):
    """The Penny API, synchronously. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout_seconds: float | httpx.Timeout | None = None,
        retry_policy: RetryPolicy | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        api_version: str = API_VERSION,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(api_key, base_url, retry_policy, on_retry, api_version)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self._headers, timeout=_timeout(timeout_seconds), transport=transport
        )

    def __enter__(self) -> PennyClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _send(self, call: _Call) -> Any:
        retry = 0
        while True:
            response: httpx.Response | None = None
            failure: Exception | None = None
            try:
                response = self._http.request(
                    call.method,
                    call.path,
                    params=tuple(call.params),
                    json=call.body,
                    headers=call.headers(),
                )
            except httpx.TransportError as error:  # timeouts included
                failure = error
            outcome, wait = self._decide(call, retry, response, failure)
            if wait is None:
                if isinstance(outcome, PennyError):
                    raise outcome
                return outcome
            time.sleep(wait)
            retry += 1

    def _page(self, call: _Call) -> Page[Any]:
        payload = self._send(call)

        def following(cursor: str) -> Page[Any]:
            return self._page(_following_call(call, cursor))

        return Page(payload["data"], bool(payload["has_more"]), str(payload["url"]), following, _backwards(call))

    # payments

    def create_payment(
        self,
        *,
        order_id: str,
        amount: int,
        currency: str,
        customer: str,
        payment_method: str,
        recipients: Sequence[Recipient],
        application_fee_bps: int | None = None,
        tax_amount: int | None = None,
        capture_method: Literal["automatic", "manual"] | None = None,
        description: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Payment:
        """POST /v1/payments: answers at the payment's first milestone (or `processing`)."""
        body = _payment_body(
            order_id,
            amount,
            currency,
            customer,
            payment_method,
            recipients,
            application_fee_bps,
            tax_amount,
            capture_method,
            description,
            metadata,
        )
        return cast(Payment, self._send(_post("/v1/payments", body, idempotency_key)))

    def retrieve_payment(
        self, payment_id: str, *, expand: Sequence[Literal["events", "refunds", "ledger_lines"]] = ()
    ) -> Payment:
        params = _query(expand=list(expand) or None)
        return cast(Payment, self._send(_Call("GET", f"/v1/payments/{payment_id}", params)))

    def list_payments(
        self,
        *,
        status: str | None = None,
        customer: str | None = None,
        created_gte: int | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> Page[Payment]:
        """Newest first."""
        params = _query(status=status, customer=customer, **_list_params(limit, starting_after, ending_before))
        if created_gte is not None:
            params.append(("created[gte]", str(created_gte)))
        return self._page(_Call("GET", "/v1/payments", params))

    def capture_payment(
        self, payment_id: str, *, amount: int | None = None, idempotency_key: str | None = None
    ) -> Payment:
        call = _post(f"/v1/payments/{payment_id}/capture", _body(amount=amount), idempotency_key)
        return cast(Payment, self._send(call))

    def cancel_payment(
        self, payment_id: str, *, reason: str | None = None, idempotency_key: str | None = None
    ) -> Payment:
        call = _post(f"/v1/payments/{payment_id}/cancel", _body(reason=reason), idempotency_key)
        return cast(Payment, self._send(call))

    def list_payment_events(
        self,
        payment_id: str,
        *,
        limit: int | None = None,
        starting_after: int | None = None,
        ending_before: int | None = None,
    ) -> Page[PaymentEvent]:
        """Oldest first."""
        params = _query(**_list_params(limit, starting_after, ending_before))
        return self._page(_Call("GET", f"/v1/payments/{payment_id}/events", params))

    def list_payment_ledger_lines(
        self,
        payment_id: str,
        *,
        limit: int | None = None,
        starting_after: int | None = None,
        ending_before: int | None = None,
    ) -> Page[LedgerEntry]:
        """The payment's ledger entries, oldest first."""
        params = _query(**_list_params(limit, starting_after, ending_before))
        return self._page(_Call("GET", f"/v1/payments/{payment_id}/ledger", params))

    # refunds

    def create_refund(
        self,
        payment_id: str,
        *,
        amount: int | None = None,
        reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None,
        idempotency_key: str | None = None,
    ) -> Refund:
        call = _post(f"/v1/payments/{payment_id}/refunds", _body(amount=amount, reason=reason), idempotency_key)
        return cast(Refund, self._send(call))

    def list_refunds(
        self,
        payment_id: str,
        *,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> Page[Refund]:
        params = _query(**_list_params(limit, starting_after, ending_before))
        return self._page(_Call("GET", f"/v1/payments/{payment_id}/refunds", params))

    def retrieve_refund(self, refund_id: str) -> Refund:
        return cast(Refund, self._send(_Call("GET", f"/v1/refunds/{refund_id}")))

    # ledger (ops keys)

    def list_ledger_accounts(
        self, *, limit: int | None = None, starting_after: str | None = None
    ) -> Page[LedgerAccount]:
        params = _query(**_list_params(limit, starting_after, None))
        return self._page(_Call("GET", "/v1/ledger/accounts", params))

    def retrieve_ledger_account(self, code: str) -> LedgerAccount:
        return cast(LedgerAccount, self._send(_Call("GET", f"/v1/ledger/accounts/{code}")))

    # review queue (ops keys)

    def list_reviews(
        self,
        *,
        kind: str | None = None,
        status: Literal["open", "resolved"] | None = None,
        payment: str | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> Page[Review]:
        params = _query(kind=kind, status=status, payment=payment, **_list_params(limit, starting_after, ending_before))
        return self._page(_Call("GET", "/v1/reviews", params))

    def retrieve_review(self, review_id: str) -> Review:
        return cast(Review, self._send(_Call("GET", f"/v1/reviews/{review_id}")))

    def resolve_review(self, review_id: str, *, action: str, note: str, idempotency_key: str | None = None) -> Review:
        call = _post(f"/v1/reviews/{review_id}/resolve", _body(action=action, note=note), idempotency_key)
        return cast(Review, self._send(call))

    # outbox subscribers (ops keys)

    def create_webhook_endpoint(
        self,
        *,
        url: str,
        enabled_events: Sequence[str],
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> WebhookEndpoint:
        body = _body(url=url, enabled_events=list(enabled_events), description=description)
        return cast(WebhookEndpoint, self._send(_post("/v1/webhook_endpoints", body, idempotency_key)))

    def list_webhook_endpoints(
        self, *, status: str | None = None, limit: int | None = None, starting_after: str | None = None
    ) -> Page[WebhookEndpoint]:
        params = _query(status=status, **_list_params(limit, starting_after, None))
        return self._page(_Call("GET", "/v1/webhook_endpoints", params))

    def retrieve_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        return cast(WebhookEndpoint, self._send(_Call("GET", f"/v1/webhook_endpoints/{endpoint_id}")))

    def update_webhook_endpoint(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        enabled_events: Sequence[str] | None = None,
        description: str | None = None,
        disabled: bool | None = None,
        idempotency_key: str | None = None,
    ) -> WebhookEndpoint:
        events = list(enabled_events) if enabled_events is not None else None
        body = _body(url=url, enabled_events=events, description=description, disabled=disabled)
        return cast(WebhookEndpoint, self._send(_post(f"/v1/webhook_endpoints/{endpoint_id}", body, idempotency_key)))

    def delete_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpointDeleted:
        """Idempotent by itself (deleting again answers the same), so it is retried like a read."""
        return cast(WebhookEndpointDeleted, self._send(_Call("DELETE", f"/v1/webhook_endpoints/{endpoint_id}")))

    def roll_webhook_endpoint_secret(
        self, endpoint_id: str, *, expires_in_seconds: int | None = None, idempotency_key: str | None = None
    ) -> WebhookEndpoint:
        path = f"/v1/webhook_endpoints/{endpoint_id}/roll_secret"
        return cast(
            WebhookEndpoint, self._send(_post(path, _body(expires_in_seconds=expires_in_seconds), idempotency_key))
        )

    def list_webhook_deliveries(
        self,
        endpoint_id: str,
        *,
        status: str | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
    ) -> Page[WebhookDelivery]:
        params = _query(status=status, **_list_params(limit, starting_after, None))
        return self._page(_Call("GET", f"/v1/webhook_endpoints/{endpoint_id}/deliveries", params))

    def retrieve_webhook_delivery(self, delivery_id: str) -> WebhookDelivery:
        return cast(WebhookDelivery, self._send(_Call("GET", f"/v1/webhook_deliveries/{delivery_id}")))

    def redeliver_webhook_delivery(self, delivery_id: str, *, idempotency_key: str | None = None) -> WebhookDelivery:
        call = _post(f"/v1/webhook_deliveries/{delivery_id}/redeliver", None, idempotency_key)
        return cast(WebhookDelivery, self._send(call))

    # operations

    def health(self) -> dict[str, Any]:
        """GET /healthz: the API and each dependency's state."""
        return cast(dict[str, Any], self._send(_Call("GET", "/healthz")))


# ----------------------------------------------------------------------------- async client


class AsyncPennyClient(_Base):
    """The Penny API, asynchronously: the same methods as PennyClient, as coroutines."""

    def __init__(
        self,
        api_key: str,
        base_url: str = DEFAULT_BASE_URL,
        *,
        timeout_seconds: float | httpx.Timeout | None = None,
        retry_policy: RetryPolicy | None = None,
        on_retry: Callable[[RetryEvent], None] | None = None,
        api_version: str = API_VERSION,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        super().__init__(api_key, base_url, retry_policy, on_retry, api_version)
        self._http = httpx.AsyncClient(
            base_url=self.base_url,
            headers=self._headers,
            timeout=_timeout(timeout_seconds),
            transport=transport,
            limits=limits or httpx.Limits(max_connections=100, max_keepalive_connections=20),  # httpx's defaults
        )

    async def __aenter__(self) -> AsyncPennyClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def _send(self, call: _Call) -> Any:
        retry = 0
        while True:
            response: httpx.Response | None = None
            failure: Exception | None = None
            try:
                response = await self._http.request(
                    call.method,
                    call.path,
                    params=tuple(call.params),
                    json=call.body,
                    headers=call.headers(),
                )
            except httpx.TransportError as error:  # timeouts included
                failure = error
            outcome, wait = self._decide(call, retry, response, failure)
            if wait is None:
                if isinstance(outcome, PennyError):
                    raise outcome
                return outcome
            await asyncio.sleep(wait)
            retry += 1

    async def _page(self, call: _Call) -> AsyncPage[Any]:
        payload = await self._send(call)

        async def following(cursor: str) -> AsyncPage[Any]:
            return await self._page(_following_call(call, cursor))

        return AsyncPage(payload["data"], bool(payload["has_more"]), str(payload["url"]), following, _backwards(call))

    # payments

    async def create_payment(
        self,
        *,
        order_id: str,
        amount: int,
        currency: str,
        customer: str,
        payment_method: str,
        recipients: Sequence[Recipient],
        application_fee_bps: int | None = None,
        tax_amount: int | None = None,
        capture_method: Literal["automatic", "manual"] | None = None,
        description: str | None = None,
        metadata: Mapping[str, str] | None = None,
        idempotency_key: str | None = None,
    ) -> Payment:
        """POST /v1/payments: answers at the payment's first milestone (or `processing`)."""
        body = _payment_body(
            order_id,
            amount,
            currency,
            customer,
            payment_method,
            recipients,
            application_fee_bps,
            tax_amount,
            capture_method,
            description,
            metadata,
        )
        return cast(Payment, await self._send(_post("/v1/payments", body, idempotency_key)))

    async def retrieve_payment(
        self, payment_id: str, *, expand: Sequence[Literal["events", "refunds", "ledger_lines"]] = ()
    ) -> Payment:
        params = _query(expand=list(expand) or None)
        return cast(Payment, await self._send(_Call("GET", f"/v1/payments/{payment_id}", params)))

    async def list_payments(
        self,
        *,
        status: str | None = None,
        customer: str | None = None,
        created_gte: int | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> AsyncPage[Payment]:
        """Newest first."""
        params = _query(status=status, customer=customer, **_list_params(limit, starting_after, ending_before))
        if created_gte is not None:
            params.append(("created[gte]", str(created_gte)))
        return await self._page(_Call("GET", "/v1/payments", params))

    async def capture_payment(
        self, payment_id: str, *, amount: int | None = None, idempotency_key: str | None = None
    ) -> Payment:
        call = _post(f"/v1/payments/{payment_id}/capture", _body(amount=amount), idempotency_key)
        return cast(Payment, await self._send(call))

    async def cancel_payment(
        self, payment_id: str, *, reason: str | None = None, idempotency_key: str | None = None
    ) -> Payment:
        call = _post(f"/v1/payments/{payment_id}/cancel", _body(reason=reason), idempotency_key)
        return cast(Payment, await self._send(call))

    async def list_payment_events(
        self,
        payment_id: str,
        *,
        limit: int | None = None,
        starting_after: int | None = None,
        ending_before: int | None = None,
    ) -> AsyncPage[PaymentEvent]:
        params = _query(**_list_params(limit, starting_after, ending_before))
        return await self._page(_Call("GET", f"/v1/payments/{payment_id}/events", params))

    async def list_payment_ledger_lines(
        self,
        payment_id: str,
        *,
        limit: int | None = None,
        starting_after: int | None = None,
        ending_before: int | None = None,
    ) -> AsyncPage[LedgerEntry]:
        params = _query(**_list_params(limit, starting_after, ending_before))
        return await self._page(_Call("GET", f"/v1/payments/{payment_id}/ledger", params))

    # refunds

    async def create_refund(
        self,
        payment_id: str,
        *,
        amount: int | None = None,
        reason: Literal["duplicate", "fraudulent", "requested_by_customer"] | None = None,
        idempotency_key: str | None = None,
    ) -> Refund:
        call = _post(f"/v1/payments/{payment_id}/refunds", _body(amount=amount, reason=reason), idempotency_key)
        return cast(Refund, await self._send(call))

    async def list_refunds(
        self,
        payment_id: str,
        *,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> AsyncPage[Refund]:
        params = _query(**_list_params(limit, starting_after, ending_before))
        return await self._page(_Call("GET", f"/v1/payments/{payment_id}/refunds", params))

    async def retrieve_refund(self, refund_id: str) -> Refund:
        return cast(Refund, await self._send(_Call("GET", f"/v1/refunds/{refund_id}")))

    # ledger (ops keys)

    async def list_ledger_accounts(
        self, *, limit: int | None = None, starting_after: str | None = None
    ) -> AsyncPage[LedgerAccount]:
        params = _query(**_list_params(limit, starting_after, None))
        return await self._page(_Call("GET", "/v1/ledger/accounts", params))

    async def retrieve_ledger_account(self, code: str) -> LedgerAccount:
        return cast(LedgerAccount, await self._send(_Call("GET", f"/v1/ledger/accounts/{code}")))

    # review queue (ops keys)

    async def list_reviews(
        self,
        *,
        kind: str | None = None,
        status: Literal["open", "resolved"] | None = None,
        payment: str | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
        ending_before: str | None = None,
    ) -> AsyncPage[Review]:
        params = _query(kind=kind, status=status, payment=payment, **_list_params(limit, starting_after, ending_before))
        return await self._page(_Call("GET", "/v1/reviews", params))

    async def retrieve_review(self, review_id: str) -> Review:
        return cast(Review, await self._send(_Call("GET", f"/v1/reviews/{review_id}")))

    async def resolve_review(
        self, review_id: str, *, action: str, note: str, idempotency_key: str | None = None
    ) -> Review:
        call = _post(f"/v1/reviews/{review_id}/resolve", _body(action=action, note=note), idempotency_key)
        return cast(Review, await self._send(call))

    # outbox subscribers (ops keys)

    async def create_webhook_endpoint(
        self,
        *,
        url: str,
        enabled_events: Sequence[str],
        description: str | None = None,
        idempotency_key: str | None = None,
    ) -> WebhookEndpoint:
        body = _body(url=url, enabled_events=list(enabled_events), description=description)
        return cast(WebhookEndpoint, await self._send(_post("/v1/webhook_endpoints", body, idempotency_key)))

    async def list_webhook_endpoints(
        self, *, status: str | None = None, limit: int | None = None, starting_after: str | None = None
    ) -> AsyncPage[WebhookEndpoint]:
        params = _query(status=status, **_list_params(limit, starting_after, None))
        return await self._page(_Call("GET", "/v1/webhook_endpoints", params))

    async def retrieve_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpoint:
        return cast(WebhookEndpoint, await self._send(_Call("GET", f"/v1/webhook_endpoints/{endpoint_id}")))

    async def update_webhook_endpoint(
        self,
        endpoint_id: str,
        *,
        url: str | None = None,
        enabled_events: Sequence[str] | None = None,
        description: str | None = None,
        disabled: bool | None = None,
        idempotency_key: str | None = None,
    ) -> WebhookEndpoint:
        events = list(enabled_events) if enabled_events is not None else None
        body = _body(url=url, enabled_events=events, description=description, disabled=disabled)
        call = _post(f"/v1/webhook_endpoints/{endpoint_id}", body, idempotency_key)
        return cast(WebhookEndpoint, await self._send(call))

    async def delete_webhook_endpoint(self, endpoint_id: str) -> WebhookEndpointDeleted:
        call = _Call("DELETE", f"/v1/webhook_endpoints/{endpoint_id}")
        return cast(WebhookEndpointDeleted, await self._send(call))

    async def roll_webhook_endpoint_secret(
        self, endpoint_id: str, *, expires_in_seconds: int | None = None, idempotency_key: str | None = None
    ) -> WebhookEndpoint:
        path = f"/v1/webhook_endpoints/{endpoint_id}/roll_secret"
        call = _post(path, _body(expires_in_seconds=expires_in_seconds), idempotency_key)
        return cast(WebhookEndpoint, await self._send(call))

    async def list_webhook_deliveries(
        self,
        endpoint_id: str,
        *,
        status: str | None = None,
        limit: int | None = None,
        starting_after: str | None = None,
    ) -> AsyncPage[WebhookDelivery]:
        params = _query(status=status, **_list_params(limit, starting_after, None))
        return await self._page(_Call("GET", f"/v1/webhook_endpoints/{endpoint_id}/deliveries", params))

    async def retrieve_webhook_delivery(self, delivery_id: str) -> WebhookDelivery:
        return cast(WebhookDelivery, await self._send(_Call("GET", f"/v1/webhook_deliveries/{delivery_id}")))

    async def redeliver_webhook_delivery(
        self, delivery_id: str, *, idempotency_key: str | None = None
    ) -> WebhookDelivery:
        call = _post(f"/v1/webhook_deliveries/{delivery_id}/redeliver", None, idempotency_key)
        return cast(WebhookDelivery, await self._send(call))

    # operations

    async def health(self) -> dict[str, Any]:
        return cast(dict[str, Any], await self._send(_Call("GET", "/healthz")))
