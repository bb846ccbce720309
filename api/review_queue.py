"""The review queue: list, read and resolve review items. Shared by the API (`api.reviews`) and
the CLI (`penny reviews ...`), so both apply the same rules and write the same audit trail.

How an item is resolved depends on its payment, read from the database:

- The payment is in NEEDS_REVIEW: only the payment workflow may decide (`resolve_review`
  update). It re-reads Stripe, refuses outcomes Stripe contradicts (409 `resolution_refused`)
  or cannot confirm (503 `stripe_unavailable`), books the outcome like the normal path, and
  resolves ALL the payment's open items in the transaction of that transition, recorded as
  `operator:<name>`. The actions allowed are the workflow's RESOLUTIONS.
- Otherwise (no payment, e.g. an unrouted webhook; or a payment that is not in review, e.g. a
  `refund_unknown` item on a SETTLED payment): the item alone is closed here, in one
  transaction that also writes its audit row, with `acknowledged` (handled outside Penny) or
  `dismissed` (nothing to do). The payment row is share-locked first (the order the
  workflow's transition takes its locks in), so the payment cannot enter review meanwhile.

Items are never deleted and a resolution is final (the database refuses both): resolving a
resolved item is 409 `review_already_resolved`. Every resolve request that changed something
appends one `review_actions` row per item it resolved: who, when, why, what it did. The rows
are keyed by the request (`request_key`): a retried request finds them and answers as the first
did. The workflow's resolution and these rows are two transactions (the workflow's activity
owns the first): if the process dies between them, the retried request finds the item resolved
by the same operator with the same action and note and no audit row yet, and writes the rows
then, from what the workflow's transaction recorded (the items it resolved and the payment's
`payment_events` row share that transaction's timestamp).
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, get_args

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from temporalio.client import Client

from api.errors import ApiError, invalid_request, resource_missing
from api.models import (
    REVIEW_ID_PATTERN,
    REVIEW_ITEM_ACTIONS,
    REVIEW_NOTE_LENGTH_MAX,
    Review,
    ReviewActionName,
    ReviewActionOut,
    ReviewChannel,
)
from api.payments import api_status
from api.workflow_client import resolve_payment_review
from penny.keys import ApiKey
from workflows.payment_models import RESOLUTIONS, ResolveReviewRequest

REVIEW_ID_PREFIX = "rev_"
# `?kind=payment_needs_review` lists every item a payment workflow wrote as it entered (or sat in)
# NEEDS_REVIEW, whatever step failed: their own kinds name the step (step_failed,
# processor_uncertain, transfer_failed, ...), and their details carry `status_before`.
PAYMENT_NEEDS_REVIEW_KIND = "payment_needs_review"
NEEDS_REVIEW = "NEEDS_REVIEW"
PAYMENT_ACTIONS: tuple[str, ...] = RESOLUTIONS
ITEM_ACTIONS: tuple[str, ...] = REVIEW_ITEM_ACTIONS
# The API's action vocabulary is the workflow's resolutions plus the item-only ones, exactly.
assert set(get_args(ReviewActionName)) == {*PAYMENT_ACTIONS, *ITEM_ACTIONS}
assert not set(PAYMENT_ACTIONS) & set(ITEM_ACTIONS)
OPERATOR_NAME_LENGTH_MAX = 100  # resolved_by ("operator:<name> (<key id>)") holds 200 characters
EFFECT_LENGTH_MAX = 1000
REQUEST_KEY_LETTERS = 24  # 26**24 ≈ 2**113
ACTIONS_PER_REVIEW_MAX = 100  # shown per item; an item is resolved once, so it has a handful at most

TemporalProvider = Callable[[], Awaitable[Client]]


@dataclass(frozen=True)
class Operator:
    """Who acts on the queue. `name` is recorded as `operator:<name>` on the item, the payment's
    audit trail and the action; it always comes from the caller's credentials, never the request."""

    name: str
    via: ReviewChannel
    api_key_id: str | None = None

    @property
    def actor(self) -> str:
        return f"operator:{self.name}"


def operator_for_key(api_key: ApiKey) -> Operator:
    return Operator(f"{api_key.name[:OPERATOR_NAME_LENGTH_MAX]} ({api_key.id})", "api", api_key.id)


def operator_for_cli(name: str) -> Operator:
    cleaned = " ".join(name.split())[:OPERATOR_NAME_LENGTH_MAX]
    if not cleaned:
        raise ValueError("the operator name must not be empty")
    return Operator(f"{cleaned} (cli)", "cli")


def _letters(data: bytes) -> str:
    """REQUEST_KEY_LETTERS lowercase letters from `data` (base 26): no digit, so a request key can
    never look like a card number (the reason Penny's own ids are letters, see workflows/ids.py)."""
    value = int.from_bytes(data, "big")
    letters = []
    for _ in range(REQUEST_KEY_LETTERS):
        value, index = divmod(value, 26)
        letters.append(chr(ord("a") + index))
    return "".join(letters)


def request_key_for_api(api_key: ApiKey, idempotency_key: str) -> str:
    """One name per API request: a hash of the key and its Idempotency-Key (any length, any text)."""
    return "api:" + _letters(hashlib.sha256(f"{api_key.id}\x00{idempotency_key}".encode()).digest())


def request_key_for_cli() -> str:
    """One name per CLI run: random (a CLI run is never retried as the same request)."""
    return "cli:" + _letters(secrets.token_bytes(16))


def review_id(number: int) -> str:
    return f"{REVIEW_ID_PREFIX}{number}"


def review_number(review_id_text: str) -> int | None:
    """`rev_12` (or `12`, for the CLI) → 12; anything else → None."""
    digits = review_id_text.removeprefix(REVIEW_ID_PREFIX)
    if re.fullmatch(REVIEW_ID_PATTERN, REVIEW_ID_PREFIX + digits) is None:
        return None
    return int(digits)


# ----------------------------------------------------------------------------- presenting


def _unix(moment: Any) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def _payment_status(status: str | None) -> str | None:
    return api_status(status) if status is not None else None


def _action_out(row: Any) -> ReviewActionOut:
    return ReviewActionOut(
        id=row.id,
        action=row.action,
        note=row.note,
        actor=row.actor,
        api_key=row.api_key_id,
        via=row.via,
        payment_status_before=_payment_status(row.payment_status_before),  # type: ignore[arg-type]
        payment_status_after=_payment_status(row.payment_status_after),  # type: ignore[arg-type]
        effect=row.effect,
        request_id=row.request_id,
        created=int(row.created_at.timestamp()),
    )


def _review_out(row: Any, actions: list[ReviewActionOut]) -> Review:
    return Review(
        id=review_id(row.id),
        kind=row.kind,
        reason=row.reason,
        details=row.details or {},
        status=row.status,
        payment=row.payment_id,
        created=int(row.created_at.timestamp()),
        resolved_at=_unix(row.resolved_at),
        resolution=row.resolution,
        resolved_by=row.resolved_by,
        resolution_note=row.resolution_note,
        actions=actions,
    )


async def _actions_of(connection: AsyncConnection, numbers: Sequence[int]) -> dict[int, list[ReviewActionOut]]:
    if not numbers:
        return {}
    rows = await connection.execute(
        text(
            """
            SELECT * FROM (
                SELECT *, row_number() OVER (PARTITION BY review_id ORDER BY id) AS position
                  FROM review_actions WHERE review_id = ANY(:ids)
            ) numbered WHERE position <= :per_review ORDER BY review_id, id
            """
        ),
        {"ids": list(numbers), "per_review": ACTIONS_PER_REVIEW_MAX},
    )
    found: dict[int, list[ReviewActionOut]] = {}
    for row in rows:
        found.setdefault(row.review_id, []).append(_action_out(row))
    return found


# ----------------------------------------------------------------------------- reading


async def list_reviews(
    engine: AsyncEngine,
    *,
    kind: str | None = None,
    status: str | None = None,
    payment_id: str | None = None,
    limit: int,
    starting_after: int | None = None,
    ending_before: int | None = None,
) -> tuple[list[Review], bool]:
    """Newest first (by id); `starting_after` is the id of the last item of the previous page,
    `ending_before` the first item of the next one (the page just before it, still newest first).
    Returns the page and whether more items lie beyond it in the direction it was read."""
    conditions = ["TRUE"]
    values: dict[str, Any] = {"limit": limit + 1}
    if kind == PAYMENT_NEEDS_REVIEW_KIND:
        # Written by the payment workflow as it moved (or kept) the payment in NEEDS_REVIEW.
        conditions.append("payment_id IS NOT NULL AND details->>'status_before' IS NOT NULL")
    elif kind is not None:
        conditions.append("kind = :kind")
        values["kind"] = kind
    if status is not None:
        conditions.append("status = :status")
        values["status"] = status
    if payment_id is not None:
        conditions.append("payment_id = :payment_id")
        values["payment_id"] = payment_id
    if starting_after is not None:
        conditions.append("id < :starting_after")
        values["starting_after"] = starting_after
    order = "DESC"
    if ending_before is not None:
        conditions.append("id > :ending_before")
        values["ending_before"] = ending_before
        order = "ASC"  # the items nearest the cursor first, then turned back to newest first
    async with engine.connect() as connection:
        rows = (
            await connection.execute(
                text(f"SELECT * FROM review_items WHERE {' AND '.join(conditions)} ORDER BY id {order} LIMIT :limit"),
                values,
            )
        ).all()
        page = list(rows[:limit])
        if ending_before is not None:
            page.reverse()
        actions = await _actions_of(connection, [row.id for row in page])
    return [_review_out(row, actions.get(row.id, [])) for row in page], len(rows) > limit


async def _item_row(connection: AsyncConnection, number: int, *, lock: bool = False) -> Any:
    return (
        await connection.execute(
            text(f"SELECT * FROM review_items WHERE id = :id{' FOR UPDATE' if lock else ''}"), {"id": number}
        )
    ).one_or_none()


async def get_review(engine: AsyncEngine, number: int) -> Review:
    async with engine.connect() as connection:
        row = await _item_row(connection, number)
        if row is None:
            raise resource_missing("review")
        actions = await _actions_of(connection, [number])
    return _review_out(row, actions.get(number, []))


# ----------------------------------------------------------------------------- resolving


@dataclass(frozen=True)
class Resolution:
    """One resolve request: the item, what to do, why, who, and the request's name."""

    number: int
    action: str
    note: str
    operator: Operator
    request_key: str
    request_id: str | None = None

    def __post_init__(self) -> None:
        if self.action not in (*PAYMENT_ACTIONS, *ITEM_ACTIONS):
            raise ValueError(f"unknown action {self.action!r}")
        if not 1 <= len(self.note) <= REVIEW_NOTE_LENGTH_MAX:
            raise ValueError(f"the note must be 1 to {REVIEW_NOTE_LENGTH_MAX} characters")


def _already_resolved(row: Any) -> ApiError:
    return invalid_request(
        "review_already_resolved",
        f"Review {review_id(row.id)} was already resolved ({row.resolution} by {row.resolved_by}); "
        "a resolution is final.",
        status_code=409,
    )


def _action_not_allowed(row: Any, payment_status: str | None) -> ApiError:
    if payment_status == NEEDS_REVIEW:
        allowed = PAYMENT_ACTIONS
        why = f"its payment {row.payment_id} is in review: the payment workflow resolves it"
    elif row.payment_id is None:
        allowed = ITEM_ACTIONS
        why = "it concerns no payment"
    else:
        allowed = ITEM_ACTIONS
        why = f"its payment {row.payment_id} is {_payment_status(payment_status)}, not in review"
    return invalid_request(
        "action_not_allowed",
        f"Review {review_id(row.id)} cannot be resolved that way: {why}. Use one of: {', '.join(allowed)}.",
        "action",
    )


async def _recorded(connection: AsyncConnection, resolution: Resolution) -> bool:
    """Whether this request already wrote the item's audit row (a retry of a done request)."""
    found = await connection.execute(
        text("SELECT 1 FROM review_actions WHERE request_key = :key AND review_id = :id"),
        {"key": resolution.request_key, "id": resolution.number},
    )
    return found.first() is not None


async def _append_action(
    connection: AsyncConnection,
    resolution: Resolution,
    number: int,
    payment_id: str | None,
    status_before: str | None,
    status_after: str | None,
    effect: str,
) -> None:
    await connection.execute(
        text(
            """
            INSERT INTO review_actions (review_id, request_key, action, note, actor, api_key_id, via, payment_id,
                                        payment_status_before, payment_status_after, effect, request_id)
            VALUES (:review_id, :request_key, :action, :note, :actor, :api_key_id, :via, :payment_id,
                    :before, :after, :effect, :request_id)
            ON CONFLICT (request_key, review_id) DO NOTHING
            """
        ),
        {
            "review_id": number,
            "request_key": resolution.request_key,
            "action": resolution.action,
            "note": resolution.note,
            "actor": resolution.operator.actor,
            "api_key_id": resolution.operator.api_key_id,
            "via": resolution.operator.via,
            "payment_id": payment_id,
            "before": status_before,
            "after": status_after,
            "effect": effect[:EFFECT_LENGTH_MAX],
            "request_id": (resolution.request_id or None) and resolution.request_id[:100],
        },
    )


async def resolve_review(engine: AsyncEngine, temporal: TemporalProvider, resolution: Resolution) -> Review:
    """Resolve one review item (see the module docstring); returns it as it now is.

    Raises ApiError: 404 `resource_missing`, 409 `review_already_resolved`, 400
    `action_not_allowed`, and from the workflow 409 `resolution_refused` /
    `payment_state_conflict`, 503 `stripe_unavailable` / `service_unavailable`.
    """
    async with engine.connect() as connection:
        row = await _item_row(connection, resolution.number)
        if row is None:
            raise resource_missing("review")
        done = await _recorded(connection, resolution)
        payment = None
        if row.payment_id is not None:
            payment = (
                await connection.execute(
                    text("SELECT status, workflow_id FROM payments WHERE id = :id"), {"id": row.payment_id}
                )
            ).one()
    if done:
        return await get_review(engine, resolution.number)
    if resolution.action in PAYMENT_ACTIONS:
        if row.status == "resolved":
            if not await _resolved_by_this_request(engine, row, resolution):
                raise _already_resolved(row)
            await _audit_workflow_resolution(engine, resolution, row, status_answered=None)
        elif payment is None or payment.status != NEEDS_REVIEW:
            raise _action_not_allowed(row, payment.status if payment is not None else None)
        else:
            # The database may trail the workflow: the workflow itself refuses a payment no longer in review.
            await _resolve_through_workflow(engine, temporal, resolution, row, payment)
    else:
        if row.status == "resolved":
            raise _already_resolved(row)
        await _resolve_in_database(engine, resolution)
    return await get_review(engine, resolution.number)


async def _resolved_by_this_request(engine: AsyncEngine, row: Any, resolution: Resolution) -> bool:
    """A resolved item this request's own earlier attempt resolved through the workflow, dying
    before it wrote the audit rows: same operator, action and note, and no audit row at all."""
    if (row.resolved_by, row.resolution, row.resolution_note) != (
        resolution.operator.actor,
        resolution.action,
        resolution.note,
    ):
        return False
    async with engine.connect() as connection:
        audited = await connection.execute(
            text("SELECT 1 FROM review_actions WHERE review_id = :id LIMIT 1"), {"id": row.id}
        )
        return audited.first() is None


async def _resolve_in_database(engine: AsyncEngine, resolution: Resolution) -> None:
    """Close one item (no payment, or a payment not in review) and audit it, in one transaction."""
    async with engine.begin() as connection:
        row = await _item_row(connection, resolution.number)
        assert row is not None, "review items are never deleted"
        status = None
        if row.payment_id is not None:
            # Locked before the item, in the order the workflow's transition locks them.
            status = (
                await connection.execute(
                    text("SELECT status FROM payments WHERE id = :id FOR SHARE"), {"id": row.payment_id}
                )
            ).scalar_one()
            if status == NEEDS_REVIEW:
                raise _action_not_allowed(row, status)
        row = await _item_row(connection, resolution.number, lock=True)
        if row.status == "resolved":
            raise _already_resolved(row)
        await connection.execute(
            text(
                """
                UPDATE review_items
                   SET status = 'resolved', resolved_at = now(), resolution = :action,
                       resolved_by = :actor, resolution_note = :note
                 WHERE id = :id AND status = 'open'
                """
            ),
            {
                "id": resolution.number,
                "action": resolution.action,
                "actor": resolution.operator.actor,
                "note": resolution.note,
            },
        )
        effect = f"{resolution.action} {review_id(row.id)}: the item is resolved"
        if row.payment_id is not None:
            effect += f"; payment {row.payment_id} unchanged ({_payment_status(status)})"
        await _append_action(connection, resolution, row.id, row.payment_id, status, status, effect)


async def _resolve_through_workflow(
    engine: AsyncEngine, temporal: TemporalProvider, resolution: Resolution, row: Any, payment: Any
) -> None:
    """The workflow's checked resolution, then the audit rows for every item it resolved."""
    client = await temporal()
    request = ResolveReviewRequest(
        resolution=resolution.action, note=resolution.note, operator=resolution.operator.name
    )
    try:
        state = await resolve_payment_review(client, payment.workflow_id, request)
    except ApiError as error:
        if error.detail.code == "payment_state_conflict":
            # Someone (an operator, Stripe's own answer) took the payment out of review first.
            async with engine.connect() as connection:
                now = await _item_row(connection, resolution.number)
            if now.status == "resolved":
                raise _already_resolved(now) from None
        raise
    await _audit_workflow_resolution(engine, resolution, row, status_answered=str(state.status))


async def _audit_workflow_resolution(
    engine: AsyncEngine, resolution: Resolution, row: Any, *, status_answered: str | None
) -> None:
    """Append the request's audit rows: one per item the workflow's transition resolved (they share
    its transaction's timestamp), with the status that transition moved the payment to. When the
    requested item is still open (the workflow accepted the resolution but the step it resumed
    failed again at once), one row on it, with the status the workflow answered."""
    actor = resolution.operator.actor
    async with engine.begin() as connection:
        after = await _item_row(connection, resolution.number)
        if after.status == "resolved" and after.resolved_by == actor:
            moment = {"payment_id": row.payment_id, "resolved_at": after.resolved_at, "actor": actor}
            numbers = list(
                (
                    await connection.execute(
                        text(
                            "SELECT id FROM review_items WHERE payment_id = :payment_id "
                            "AND resolved_at = :resolved_at AND resolved_by = :actor ORDER BY id"
                        ),
                        moment,
                    )
                ).scalars()
            )
            status_after = (
                await connection.execute(
                    text(
                        "SELECT to_status FROM payment_events WHERE payment_id = :payment_id "
                        "AND from_status = 'NEEDS_REVIEW' AND actor = :actor AND created_at = :resolved_at "
                        "ORDER BY id LIMIT 1"
                    ),
                    moment,
                )
            ).scalar_one_or_none() or status_answered
            effect = (
                f"{resolution.action}: the payment workflow checked it against Stripe and moved payment "
                f"{row.payment_id} from needs_review to {_payment_status(status_after)}; resolved "
                + ", ".join(review_id(number) for number in numbers)
            )
        else:
            numbers = [resolution.number]
            status_after = status_answered
            effect = (
                f"{resolution.action}: the payment workflow accepted it, but payment {row.payment_id} is "
                f"{_payment_status(status_after)}; the item stays open (see the payment's newest review item)"
            )
        for number in numbers:
            await _append_action(connection, resolution, number, row.payment_id, NEEDS_REVIEW, status_after, effect)
