"""Outbox subscribers (webhook endpoints) and their deliveries: the ops side of the outbox relay.

`ops` keys only. An endpoint is a URL plus the event types it wants (`payment.<status>`, or
`*`); the relay (activities/outbox.py) POSTs each matching event to it, signed with the
endpoint's secret (`whsec_...`), which is shown only when it is made: in the create response
and in the roll response. Reads never show it.

- Create: the endpoint's id is derived from the caller and the Idempotency-Key
  (`activities.outbox_types.endpoint_id_for_request`), so a retried create whose response was
  lost finds the endpoint it made instead of making a second one.
- Delete is soft (`deleted_at`): the endpoint and its delivery history stay readable, its
  pending deliveries are canceled, its secrets expire, and it gets no new deliveries.
- Roll: a new secret signs from now on; the old ones keep signing beside it until
  `expires_in_seconds` (default a day, 0 = now), so subscribers can switch without a gap. At
  most WEBHOOK_SECRETS_ACTIVE_MAX secrets sign at once (the oldest are expired first).
- Redeliver: a dead (or delivered) delivery goes back to `pending` with its attempts reset;
  who asked and when are kept on the delivery.

Validation (URL, event types) and lookups happen before the Idempotency-Key is taken, so a
refused request stores nothing, as everywhere in this API.
"""

from __future__ import annotations

import secrets
import string
from datetime import datetime
from typing import Annotated, Any, Literal, get_args

from fastapi import APIRouter, Body, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from activities.outbox_types import (
    ALL_EVENTS,
    DELIVERY_CANCELED,
    DELIVERY_ID_PATTERN,
    DELIVERY_PENDING,
    DELIVERY_STATUSES,
    ENDPOINT_ID_PATTERN,
    EVENT_TYPES,
    WEBHOOK_ENDPOINTS_MAX,
    WEBHOOK_URL_LENGTH_MAX,
    endpoint_id_for_request,
    url_problem,
)
from api.auth import OpsKey
from api.errors import (
    ERROR_RESPONSES,
    IDEMPOTENT_POST_RESPONSES,
    ApiError,
    invalid_request,
    json_response,
    resource_missing,
)
from api.models import NO_NUL_PATTERN, PAGE_SIZE_DEFAULT, PAGE_SIZE_MAX
from api.payments import Engine, IdempotencyKey, _engine, _raw_json, _run_idempotent, _settings, _unix
from penny.keys import ApiKey

router = APIRouter(prefix="/v1", tags=["webhook endpoints"])

ENDPOINT_DESCRIPTION_LENGTH_MAX = 500
EVENT_TYPE_LENGTH_MAX = 64
SECRET_PREFIX = "whsec_"
SECRET_LETTERS = 32  # 32 of 52 letters: 182 bits; letters only, so never card-shaped
SECRET_ALPHABET = string.ascii_letters
ROLL_EXPIRY_DEFAULT_SECONDS = 24 * 3600
ROLL_EXPIRY_MAX_SECONDS = 7 * 24 * 3600
# Signatures per delivery are bounded: one per active secret.
WEBHOOK_SECRETS_ACTIVE_MAX = 3
ACTOR_NAME_LENGTH_MAX = 100
DELIVERY_EXPLAINED = (
    "`pending`: waiting for its next attempt (`next_attempt`) or in flight; `delivered`: the endpoint answered "
    "2xx; `dead`: attempts exhausted, a `delivery_dead_letter` review item names it; `canceled`: its endpoint "
    "was deleted first."
)

EndpointId = Annotated[str, Path(pattern=ENDPOINT_ID_PATTERN, examples=["we_abcdefghijklmnopqrstuvwx"])]
DeliveryId = Annotated[str, Path(pattern=DELIVERY_ID_PATTERN, examples=["wd_abcdefghijklmnopqrstuvwx"])]
EventType = Annotated[
    str,
    Field(
        min_length=1,
        max_length=EVENT_TYPE_LENGTH_MAX,
        json_schema_extra={"enum": [ALL_EVENTS, *EVENT_TYPES]},
        description="`payment.<status>`, or `*` for every event.",
    ),
]
EnabledEvents = Annotated[list[EventType], Field(min_length=1, max_length=len(EVENT_TYPES) + 1)]
Description = Annotated[str, Field(max_length=ENDPOINT_DESCRIPTION_LENGTH_MAX, pattern=NO_NUL_PATTERN)]
Url = Annotated[
    str,
    Field(
        min_length=1,
        max_length=WEBHOOK_URL_LENGTH_MAX,
        description="https URL (plain http only to a loopback address, when PENNY_WEBHOOK_ALLOW_LOOPBACK is on).",
    ),
]
EndpointStatus = Literal["enabled", "disabled", "deleted"]
DeliveryStatus = Literal["pending", "delivered", "dead", "canceled"]
assert set(get_args(DeliveryStatus)) == set(DELIVERY_STATUSES)

_STRICT = ConfigDict(extra="forbid", strict=True)


class WebhookEndpointCreate(BaseModel):
    model_config = _STRICT

    url: Url
    enabled_events: EnabledEvents
    description: Description = ""


class WebhookEndpointUpdate(BaseModel):
    model_config = _STRICT

    url: Url | None = None
    enabled_events: EnabledEvents | None = None
    description: Description | None = None
    disabled: bool | None = Field(None, description="true: no new deliveries until it is enabled again.")


class WebhookEndpointRollSecret(BaseModel):
    model_config = _STRICT

    expires_in_seconds: int | None = Field(
        None,
        ge=0,
        le=ROLL_EXPIRY_MAX_SECONDS,
        description=f"How long the current secret keeps signing beside the new one (default "
        f"{ROLL_EXPIRY_DEFAULT_SECONDS} s; 0: it stops now).",
    )


class WebhookEndpoint(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    url: str
    enabled_events: list[str]
    description: str
    status: EndpointStatus
    previous_secret_expires: int | None = Field(
        None, description="While a rolled secret still signs: Unix time it stops."
    )
    created: int
    deleted: int | None = Field(None, description="Unix time it was deleted (soft delete), if it was.")


class WebhookEndpointWithSecret(WebhookEndpoint):
    secret: str = Field(description="The signing secret: shown in this response only. Keep it.")


class WebhookEndpointList(BaseModel):
    object: Literal["list"] = "list"
    url: str
    has_more: bool
    data: list[WebhookEndpoint]


class WebhookEndpointDeleted(BaseModel):
    id: str
    object: Literal["webhook_endpoint"] = "webhook_endpoint"
    deleted: Literal[True] = True


class WebhookDelivery(BaseModel):
    id: str
    object: Literal["webhook_delivery"] = "webhook_delivery"
    endpoint: str
    event: str = Field(description="The event id (`Penny-Event-Id`).")
    event_type: str
    payment: str
    status: DeliveryStatus = Field(description=DELIVERY_EXPLAINED)
    attempts: int
    last_attempt: int | None
    last_status_code: int | None
    last_error: str | None
    next_attempt: int | None = Field(description="While pending: Unix time of the next attempt (or its lease's end).")
    delivered: int | None
    redeliveries: int
    redelivered: int | None
    redelivered_by: str | None
    created: int


class WebhookDeliveryList(BaseModel):
    object: Literal["list"] = "list"
    url: str
    has_more: bool
    data: list[WebhookDelivery]


# ----------------------------------------------------------------------------- presenting


def _unix_or_none(moment: datetime | None) -> int | None:
    return _unix(moment) if moment is not None else None


_ENDPOINT_COLUMNS = """
    endpoint.id, endpoint.url, endpoint.enabled_events, endpoint.description, endpoint.status,
    endpoint.created_at, endpoint.deleted_at,
    (SELECT max(secret.expires_at) FROM webhook_endpoint_secrets secret
      WHERE secret.endpoint_id = endpoint.id AND secret.expires_at > now()) AS previous_secret_expires_at
"""


def endpoint_from_row(row: Any) -> dict[str, Any]:
    return WebhookEndpoint(
        id=row.id,
        url=row.url,
        enabled_events=list(row.enabled_events),
        description=row.description,
        status="deleted" if row.deleted_at is not None else row.status,
        previous_secret_expires=_unix_or_none(row.previous_secret_expires_at),
        created=_unix(row.created_at),
        deleted=_unix_or_none(row.deleted_at),
    ).model_dump(mode="json")


def delivery_from_row(row: Any) -> dict[str, Any]:
    return WebhookDelivery(
        id=row.id,
        endpoint=row.endpoint_id,
        event=row.event_id,
        event_type=row.event_type,
        payment=row.payment_id,
        status=row.status,
        attempts=row.attempts,
        last_attempt=_unix_or_none(row.last_attempt_at),
        last_status_code=row.last_status_code,
        last_error=row.last_error,
        next_attempt=_unix(row.next_attempt_at) if row.status == DELIVERY_PENDING else None,
        delivered=_unix_or_none(row.delivered_at),
        redeliveries=row.redeliveries,
        redelivered=_unix_or_none(row.redelivered_at),
        redelivered_by=row.redelivered_by,
        created=_unix(row.created_at),
    ).model_dump(mode="json")


def _actor(api_key: ApiKey) -> str:
    return f"{api_key.name[:ACTOR_NAME_LENGTH_MAX]} ({api_key.id})"


def new_secret() -> str:
    return SECRET_PREFIX + "".join(secrets.choice(SECRET_ALPHABET) for _ in range(SECRET_LETTERS))


# ----------------------------------------------------------------------------- validation


def _check_url(request: Request, url: str) -> None:
    problem = url_problem(url, allow_loopback=_settings(request).webhook_loopback_allowed)
    if problem is not None:
        # The message names the rule, never the URL (it may carry a token).
        raise invalid_request("url_invalid", f"Invalid url: {problem}.", "url")


def _check_events(events: list[str]) -> list[str]:
    for index, event_type in enumerate(events):
        if event_type != ALL_EVENTS and event_type not in EVENT_TYPES:
            raise invalid_request(
                "parameter_invalid",
                f"Invalid enabled_events[{index}]: must be `*` or one of {', '.join(EVENT_TYPES)}.",
                f"enabled_events[{index}]",
            )
    # "*" already means every event: stored alone.
    return [ALL_EVENTS] if ALL_EVENTS in events else sorted(set(events))


async def _endpoint_row(connection: AsyncConnection, endpoint_id: str) -> Any:
    return (
        await connection.execute(
            text(f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints endpoint WHERE endpoint.id = :id"),
            {"id": endpoint_id},
        )
    ).one_or_none()


async def _existing_endpoint(request: Request, endpoint_id: str) -> Any:
    async with _engine(request).connect() as connection:
        row = await _endpoint_row(connection, endpoint_id)
    if row is None:
        raise resource_missing("webhook endpoint")
    return row


def _endpoint_deleted() -> ApiError:
    return invalid_request(
        "webhook_endpoint_deleted", "This webhook endpoint was deleted; create a new one.", status_code=400
    )


async def _current_secret(connection: AsyncConnection, endpoint_id: str) -> str:
    return str(
        (
            await connection.execute(
                text("SELECT secret FROM webhook_endpoint_secrets WHERE endpoint_id = :id ORDER BY id DESC LIMIT 1"),
                {"id": endpoint_id},
            )
        ).scalar_one()
    )


# ----------------------------------------------------------------------------- endpoints


@router.post(
    "/webhook_endpoints",
    response_model=WebhookEndpointWithSecret,
    responses=IDEMPOTENT_POST_RESPONSES,
    summary="Subscribe a URL to outbox events (the signing secret is shown once, here)",
)
async def create_webhook_endpoint(
    request: Request, body: WebhookEndpointCreate, api_key: OpsKey, idempotency_key: IdempotencyKey
) -> Response:
    """400 `url_invalid` (param `url`) for a URL that is not https (plain http only to a loopback
    address when PENNY_WEBHOOK_ALLOW_LOOPBACK is on), carries a user name or password, or is too
    long; 400 `parameter_invalid` for an unknown event type; 400 `webhook_endpoints_limit` past
    WEBHOOK_ENDPOINTS_MAX live endpoints."""
    _check_url(request, body.url)
    events = _check_events(body.enabled_events)
    endpoint_id = endpoint_id_for_request(api_key.id, idempotency_key)
    engine = _engine(request)

    async def operation() -> tuple[int, dict[str, Any], str | None]:
        async with engine.begin() as connection:
            # One creator at a time, so the limit holds under concurrent creates.
            await connection.execute(text("SELECT pg_advisory_xact_lock(hashtext('penny.webhook_endpoints'))"))
            existing = await _endpoint_row(connection, endpoint_id)
            if existing is None:
                live = (
                    await connection.execute(text("SELECT count(*) FROM webhook_endpoints WHERE deleted_at IS NULL"))
                ).scalar_one()
                if live >= WEBHOOK_ENDPOINTS_MAX:
                    raise invalid_request(
                        "webhook_endpoints_limit",
                        f"At most {WEBHOOK_ENDPOINTS_MAX} webhook endpoints may exist; delete one first.",
                    )
                await connection.execute(
                    text(
                        """
                        INSERT INTO webhook_endpoints (id, url, enabled_events, description, created_by)
                        VALUES (:id, :url, :events, :description, :actor)
                        """
                    ),
                    {
                        "id": endpoint_id,
                        "url": body.url,
                        "events": events,
                        "description": body.description,
                        "actor": _actor(api_key),
                    },
                )
                await connection.execute(
                    text("INSERT INTO webhook_endpoint_secrets (endpoint_id, secret) VALUES (:id, :secret)"),
                    {"id": endpoint_id, "secret": new_secret()},
                )
                existing = await _endpoint_row(connection, endpoint_id)
            # A retry whose first response was lost gets the endpoint it made (and its secret).
            secret = await _current_secret(connection, endpoint_id)
        return 200, {**endpoint_from_row(existing), "secret": secret}, endpoint_id

    return await _run_idempotent(request, api_key, idempotency_key, await _raw_json(request), operation)


@router.get(
    "/webhook_endpoints",
    response_model=WebhookEndpointList,
    responses=ERROR_RESPONSES,
    summary="List webhook endpoints, newest first (deleted ones only with status=deleted)",
)
async def list_webhook_endpoints(
    api_key: OpsKey,
    engine: Engine,
    status: Annotated[EndpointStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
    starting_after: Annotated[str | None, Query(pattern=ENDPOINT_ID_PATTERN)] = None,
) -> Response:
    conditions = ["endpoint.deleted_at IS NOT NULL" if status == "deleted" else "endpoint.deleted_at IS NULL"]
    values: dict[str, Any] = {"limit": limit + 1}
    if status in ("enabled", "disabled"):
        conditions.append("endpoint.status = :status")
        values["status"] = status
    if starting_after is not None:
        conditions.append(
            "(endpoint.created_at, endpoint.id) < (SELECT created_at, id FROM webhook_endpoints WHERE id = :after)"
        )
        values["after"] = starting_after
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    f"SELECT {_ENDPOINT_COLUMNS} FROM webhook_endpoints endpoint WHERE {' AND '.join(conditions)} "
                    "ORDER BY endpoint.created_at DESC, endpoint.id DESC LIMIT :limit"
                ),
                values,
            )
        ).all()
    page = WebhookEndpointList(
        url="/v1/webhook_endpoints",
        has_more=len(rows) > limit,
        data=[WebhookEndpoint(**endpoint_from_row(row)) for row in rows[:limit]],
    )
    return json_response(200, page.model_dump(mode="json"))


@router.get(
    "/webhook_endpoints/{endpoint_id}",
    response_model=WebhookEndpoint,
    responses=ERROR_RESPONSES,
    summary="Retrieve a webhook endpoint (never its secret)",
)
async def get_webhook_endpoint(request: Request, endpoint_id: EndpointId, api_key: OpsKey) -> Response:
    return json_response(200, endpoint_from_row(await _existing_endpoint(request, endpoint_id)))


@router.post(
    "/webhook_endpoints/{endpoint_id}",
    response_model=WebhookEndpoint,
    responses=IDEMPOTENT_POST_RESPONSES,
    summary="Update a webhook endpoint: url, enabled_events, description, disabled",
)
async def update_webhook_endpoint(
    request: Request,
    endpoint_id: EndpointId,
    body: WebhookEndpointUpdate,
    api_key: OpsKey,
    idempotency_key: IdempotencyKey,
) -> Response:
    """A disabled endpoint gets no new deliveries (events that occur meanwhile are not sent to
    it later) and its pending ones wait until it is enabled again."""
    if body.url is not None:
        _check_url(request, body.url)
    events = _check_events(body.enabled_events) if body.enabled_events is not None else None
    existing = await _existing_endpoint(request, endpoint_id)
    if existing.deleted_at is not None:
        raise _endpoint_deleted()
    engine = _engine(request)

    async def operation() -> tuple[int, dict[str, Any], str | None]:
        async with engine.begin() as connection:
            updated = (
                await connection.execute(
                    text(
                        """
                        UPDATE webhook_endpoints SET
                            url = coalesce(CAST(:url AS text), url),
                            enabled_events = coalesce(CAST(:events AS text[]), enabled_events),
                            description = coalesce(CAST(:description AS text), description),
                            status = CASE WHEN CAST(:disabled AS boolean) IS NULL THEN status
                                          WHEN CAST(:disabled AS boolean) THEN 'disabled' ELSE 'enabled' END,
                            updated_at = now()
                        WHERE id = :id AND deleted_at IS NULL
                        RETURNING id
                        """
                    ),
                    {
                        "id": endpoint_id,
                        "url": body.url,
                        "events": events,
                        "description": body.description,
                        "disabled": body.disabled,
                    },
                )
            ).scalar_one_or_none()
            if updated is None:
                raise _endpoint_deleted()
            row = await _endpoint_row(connection, endpoint_id)
        return 200, endpoint_from_row(row), endpoint_id

    return await _run_idempotent(request, api_key, idempotency_key, await _raw_json(request), operation)


@router.delete(
    "/webhook_endpoints/{endpoint_id}",
    response_model=WebhookEndpointDeleted,
    responses=ERROR_RESPONSES,
    summary="Delete a webhook endpoint (soft: its delivery history stays; idempotent)",
)
async def delete_webhook_endpoint(request: Request, endpoint_id: EndpointId, api_key: OpsKey) -> Response:
    """Its pending deliveries become `canceled`, its secrets stop signing, and it gets no new
    deliveries. Deleting it again answers the same."""
    await _existing_endpoint(request, endpoint_id)
    async with _engine(request).begin() as connection:
        deleted = (
            await connection.execute(
                text(
                    """
                    UPDATE webhook_endpoints SET deleted_at = now(), deleted_by = :actor, updated_at = now()
                    WHERE id = :id AND deleted_at IS NULL
                    RETURNING id
                    """
                ),
                {"id": endpoint_id, "actor": _actor(api_key)},
            )
        ).scalar_one_or_none()
        if deleted is not None:
            await connection.execute(
                text(
                    """
                    UPDATE outbox_deliveries SET status = :canceled, claim_token = NULL, updated_at = now()
                    WHERE endpoint_id = :id AND status = 'pending'
                    """
                ),
                {"id": endpoint_id, "canceled": DELIVERY_CANCELED},
            )
            await connection.execute(
                text(
                    """
                    UPDATE webhook_endpoint_secrets SET expires_at = now()
                    WHERE endpoint_id = :id AND (expires_at IS NULL OR expires_at > now())
                    """
                ),
                {"id": endpoint_id},
            )
    return json_response(200, WebhookEndpointDeleted(id=endpoint_id).model_dump(mode="json"))


@router.post(
    "/webhook_endpoints/{endpoint_id}/roll_secret",
    response_model=WebhookEndpointWithSecret,
    responses=IDEMPOTENT_POST_RESPONSES,
    summary="Roll the signing secret (the old one keeps signing until it expires; the new one is shown once)",
)
async def roll_webhook_endpoint_secret(
    request: Request,
    endpoint_id: EndpointId,
    api_key: OpsKey,
    idempotency_key: IdempotencyKey,
    body: Annotated[WebhookEndpointRollSecret | None, Body()] = None,
) -> Response:
    """Every delivery carries one `v1` signature per active secret, so a subscriber verifying
    with either the old or the new secret accepts it until the old one expires."""
    existing = await _existing_endpoint(request, endpoint_id)
    if existing.deleted_at is not None:
        raise _endpoint_deleted()
    expires_in = ROLL_EXPIRY_DEFAULT_SECONDS
    if body is not None and body.expires_in_seconds is not None:
        expires_in = body.expires_in_seconds
    engine = _engine(request)

    async def operation() -> tuple[int, dict[str, Any], str | None]:
        async with engine.begin() as connection:
            live = (
                await connection.execute(
                    text("SELECT id FROM webhook_endpoints WHERE id = :id AND deleted_at IS NULL FOR UPDATE"),
                    {"id": endpoint_id},
                )
            ).scalar_one_or_none()
            if live is None:
                raise _endpoint_deleted()
            await connection.execute(
                text(
                    """
                    UPDATE webhook_endpoint_secrets
                    SET expires_at = LEAST(coalesce(expires_at, 'infinity'), now() + make_interval(secs => :expires_in))
                    WHERE endpoint_id = :id AND (expires_at IS NULL OR expires_at > now())
                    """
                ),
                {"id": endpoint_id, "expires_in": expires_in},
            )
            secret = new_secret()
            await connection.execute(
                text("INSERT INTO webhook_endpoint_secrets (endpoint_id, secret) VALUES (:id, :secret)"),
                {"id": endpoint_id, "secret": secret},
            )
            # Bounded signatures per delivery: beyond the cap, the oldest still-active secrets stop now.
            await connection.execute(
                text(
                    """
                    UPDATE webhook_endpoint_secrets SET expires_at = now()
                    WHERE id IN (
                        SELECT id FROM webhook_endpoint_secrets
                        WHERE endpoint_id = :id AND (expires_at IS NULL OR expires_at > now())
                        ORDER BY id DESC OFFSET :active_max)
                    """
                ),
                {"id": endpoint_id, "active_max": WEBHOOK_SECRETS_ACTIVE_MAX},
            )
            await connection.execute(
                text("UPDATE webhook_endpoints SET updated_at = now() WHERE id = :id"), {"id": endpoint_id}
            )
            row = await _endpoint_row(connection, endpoint_id)
        return 200, {**endpoint_from_row(row), "secret": secret}, endpoint_id

    return await _run_idempotent(request, api_key, idempotency_key, await _raw_json(request), operation)


# ----------------------------------------------------------------------------- deliveries


@router.get(
    "/webhook_endpoints/{endpoint_id}/deliveries",
    response_model=WebhookDeliveryList,
    responses=ERROR_RESPONSES,
    summary="An endpoint's deliveries, newest first: attempts, last status code and error, next attempt",
)
async def list_webhook_deliveries(
    request: Request,
    endpoint_id: EndpointId,
    api_key: OpsKey,
    engine: Engine,
    status: Annotated[DeliveryStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
    starting_after: Annotated[str | None, Query(pattern=DELIVERY_ID_PATTERN)] = None,
) -> Response:
    await _existing_endpoint(request, endpoint_id)
    conditions = ["endpoint_id = :endpoint_id"]
    values: dict[str, Any] = {"endpoint_id": endpoint_id, "limit": limit + 1}
    if status is not None:
        conditions.append("status = :status")
        values["status"] = status
    if starting_after is not None:
        conditions.append("(created_at, id) < (SELECT created_at, id FROM outbox_deliveries WHERE id = :after)")
        values["after"] = starting_after
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text(
                    f"SELECT * FROM outbox_deliveries WHERE {' AND '.join(conditions)} "
                    "ORDER BY created_at DESC, id DESC LIMIT :limit"
                ),
                values,
            )
        ).all()
    page = WebhookDeliveryList(
        url=f"/v1/webhook_endpoints/{endpoint_id}/deliveries",
        has_more=len(rows) > limit,
        data=[WebhookDelivery(**delivery_from_row(row)) for row in rows[:limit]],
    )
    return json_response(200, page.model_dump(mode="json"))


async def _delivery_row(connection: AsyncConnection, delivery_id: str, *, for_update: bool = False) -> Any:
    lock = " FOR UPDATE" if for_update else ""
    return (
        await connection.execute(text(f"SELECT * FROM outbox_deliveries WHERE id = :id{lock}"), {"id": delivery_id})
    ).one_or_none()


@router.get(
    "/webhook_deliveries/{delivery_id}",
    response_model=WebhookDelivery,
    responses=ERROR_RESPONSES,
    summary="Retrieve a delivery",
)
async def get_webhook_delivery(delivery_id: DeliveryId, api_key: OpsKey, engine: Engine) -> Response:
    async with engine.connect() as connection:
        row = await _delivery_row(connection, delivery_id)
    if row is None:
        raise resource_missing("webhook delivery")
    return json_response(200, delivery_from_row(row))


@router.post(
    "/webhook_deliveries/{delivery_id}/redeliver",
    response_model=WebhookDelivery,
    responses=IDEMPOTENT_POST_RESPONSES,
    summary="Send a dead (or delivered) delivery again: back to pending, attempts reset, audited",
)
async def redeliver_webhook_delivery(
    request: Request, delivery_id: DeliveryId, api_key: OpsKey, idempotency_key: IdempotencyKey
) -> Response:
    """400 `delivery_pending` when it is still pending (the relay is on it), 400
    `webhook_endpoint_deleted` when its endpoint was deleted. The relay sends it at its next
    round, in order: it holds back later events of the same payment to the same endpoint until
    it is delivered or dead again. A dead letter's review item stays open until an operator
    resolves it (`acknowledged`)."""
    engine = _engine(request)
    async with engine.connect() as connection:
        if await _delivery_row(connection, delivery_id) is None:
            raise resource_missing("webhook delivery")

    async def operation() -> tuple[int, dict[str, Any], str | None]:
        async with engine.begin() as connection:
            row = await _delivery_row(connection, delivery_id, for_update=True)
            endpoint = await _endpoint_row(connection, row.endpoint_id)
            if endpoint.deleted_at is not None or row.status == DELIVERY_CANCELED:
                raise _endpoint_deleted()
            if row.status == DELIVERY_PENDING:
                raise invalid_request(
                    "delivery_pending",
                    "This delivery is still pending: the relay sends it at its next attempt (see next_attempt).",
                )
            await connection.execute(
                text(
                    """
                    UPDATE outbox_deliveries SET
                        status = 'pending', attempts = 0, next_attempt_at = now(), delivered_at = NULL,
                        claim_token = NULL, redeliveries = redeliveries + 1, redelivered_at = now(),
                        redelivered_by = :actor, updated_at = now()
                    WHERE id = :id
                    """
                ),
                {"id": delivery_id, "actor": _actor(api_key)},
            )
            row = await _delivery_row(connection, delivery_id)
        return 200, delivery_from_row(row), delivery_id

    return await _run_idempotent(request, api_key, idempotency_key, await _raw_json(request), operation)
