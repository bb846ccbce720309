"""Idempotency-Key: the same logical request executes at most once; its response is replayed.

One row per (API key, method, path, Idempotency-Key) in `idempotency_keys`:

    no row, or expired ──acquire──▶ IN_FLIGHT (locked) ──complete──▶ COMPLETED ──expires_at──▶ swept
                                     │          ▲                     │
                  5xx or exception:  │          │ a retry takes over:  ├─ same body: replay the stored
                  release the lock   ▼          │ lock free, or older  │  response (Idempotent-Replayed)
                                  IN_FLIGHT (unlocked)  than the lock  └─ different body: 422
                                                        timeout (crash recovery)
    IN_FLIGHT (locked, fresh) + a retry → 409 idempotency_key_in_use, Retry-After
    IN_FLIGHT + a different body → 422 idempotency_key_reused

- The fingerprint is the SHA-256 of the canonical JSON body (sorted keys, no whitespace);
  one hash per top-level parameter is kept as well, so a mismatch names the parameters that
  differ without the body ever being stored.
- Validation and lookups (400, 401, 403, 404) happen before a key is taken: such requests
  did not execute, and nothing is stored for them (as with Stripe).
- A 4xx answered by the operation itself (an order conflict, a refused capture) is a
  deterministic outcome: it is stored and replayed like a 2xx. A 5xx or an exception
  releases the lock without storing anything, so the retry executes again.
- Executing again is safe because every operation behind a key is itself idempotent: a
  payment is started with update-with-start on the workflow id `payment-<order_id>` (conflict
  policy USE_EXISTING), so a retry after a crash between "workflow started" and "response
  stored" finds the same workflow and answers with its state.
- Every comparison uses the database clock (`now()`), so API replicas need no clock agreement.
- Each step is one short transaction; the Temporal call happens between transactions.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from api import metrics
from api.errors import ApiError

logger = logging.getLogger("penny.api.idempotency")

IDEMPOTENCY_KEY_LENGTH_MAX = 255
IN_FLIGHT_RETRY_AFTER_SECONDS = 1
ACQUIRE_ATTEMPTS_MAX = 3  # a row swept between our INSERT and SELECT makes us try again
SWEEP_BATCH_SIZE = 1000
SWEEP_BATCHES_MAX = 20  # per sweep run: at most 20 000 rows, then wait for the next run


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def fingerprint(value: Any) -> str:
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()


def parameter_fingerprints(body: Any) -> dict[str, str]:
    if not isinstance(body, dict):
        return {}
    return {str(name): fingerprint(value) for name, value in body.items()}


def mismatched_parameters(stored: dict[str, str], current: dict[str, str]) -> list[str]:
    return sorted(name for name in stored.keys() | current.keys() if stored.get(name) != current.get(name))


@dataclass(frozen=True)
class Scope:
    api_key_id: str
    method: str
    path: str
    key: str


@dataclass(frozen=True)
class Acquired:
    record_id: int
    lock_token: str
    recovered: bool  # True: a previous attempt was interrupted and this request takes over


@dataclass(frozen=True)
class Replay:
    status_code: int
    body_text: str


def idempotency_mismatch(key: str, names: list[str]) -> ApiError:
    listed = ", ".join(names) if names else "the request body"
    return ApiError(
        422,
        "idempotency_error",
        "idempotency_key_reused",
        "Keys for idempotent requests can only be used with the same parameters they were first used with. "
        f"Mismatched parameters: {listed}. Use a new Idempotency-Key for a different request.",
        param=names[0] if names else None,
    )


def idempotency_in_flight() -> ApiError:
    return ApiError(
        409,
        "idempotency_error",
        "idempotency_key_in_use",
        "A request with this Idempotency-Key is still being processed; retry after a moment.",
        headers={"Retry-After": str(IN_FLIGHT_RETRY_AFTER_SECONDS)},
    )


_INSERT = text(
    """
    INSERT INTO idempotency_keys (api_key_id, method, path, key, request_fingerprint, parameter_fingerprints,
                                  status, lock_token, locked_at, expires_at)
    VALUES (:api_key_id, :method, :path, :key, :fingerprint, CAST(:parameters AS jsonb),
            'in_flight', :lock_token, now(), now() + make_interval(secs => :window_seconds))
    ON CONFLICT (api_key_id, method, path, key) DO NOTHING
    RETURNING id
    """
)
_SELECT_FOR_UPDATE = text(
    """
    SELECT id, request_fingerprint, parameter_fingerprints, status, response_code, response_body,
           expires_at <= now() AS expired,
           (locked_at IS NULL OR locked_at < now() - make_interval(secs => :lock_timeout_seconds)) AS lock_free
    FROM idempotency_keys
    WHERE api_key_id = :api_key_id AND method = :method AND path = :path AND key = :key
    FOR UPDATE
    """
)
_RESTART_EXPIRED = text(
    """
    UPDATE idempotency_keys
    SET request_fingerprint = :fingerprint, parameter_fingerprints = CAST(:parameters AS jsonb),
        status = 'in_flight', lock_token = :lock_token, locked_at = now(), response_code = NULL,
        response_body = NULL, resource_id = NULL, created_at = now(), updated_at = now(),
        expires_at = now() + make_interval(secs => :window_seconds)
    WHERE id = :id
    """
)
_TAKE_OVER = text(
    "UPDATE idempotency_keys SET lock_token = :lock_token, locked_at = now(), updated_at = now() WHERE id = :id"
)


async def acquire(
    engine: AsyncEngine,
    scope: Scope,
    body: Any,
    *,
    window_seconds: int,
    lock_timeout_seconds: int,
) -> Acquired | Replay:
    """Take the key for this request, or answer from it. Raises 422 (mismatch) or 409 (in flight)."""
    request_fingerprint = fingerprint(body)
    parameters = parameter_fingerprints(body)
    values = {
        "api_key_id": scope.api_key_id,
        "method": scope.method,
        "path": scope.path,
        "key": scope.key,
        "fingerprint": request_fingerprint,
        "parameters": json.dumps(parameters),
        "window_seconds": window_seconds,
        "lock_timeout_seconds": lock_timeout_seconds,
    }
    for _ in range(ACQUIRE_ATTEMPTS_MAX):
        lock_token = secrets.token_hex(16)
        async with engine.begin() as connection:
            inserted = (await connection.execute(_INSERT, {**values, "lock_token": lock_token})).scalar_one_or_none()
            if inserted is not None:
                return Acquired(inserted, lock_token, recovered=False)
            row = (await connection.execute(_SELECT_FOR_UPDATE, values)).one_or_none()
            if row is None:
                continue  # swept in between: insert again
            return await _decide(connection, row, values, lock_token, request_fingerprint, parameters, scope)
    raise ApiError(503, "api_error", "idempotency_unavailable", "Could not record the Idempotency-Key; retry.")


async def _decide(
    connection: AsyncConnection,
    row: Any,
    values: dict[str, Any],
    lock_token: str,
    request_fingerprint: str,
    parameters: dict[str, str],
    scope: Scope,
) -> Acquired | Replay:
    if row.expired:
        await connection.execute(_RESTART_EXPIRED, {**values, "lock_token": lock_token, "id": row.id})
        return Acquired(row.id, lock_token, recovered=False)
    if row.request_fingerprint != request_fingerprint:
        metrics.CONFLICTS.labels("idempotency_mismatch").inc()
        raise idempotency_mismatch(scope.key, mismatched_parameters(dict(row.parameter_fingerprints), parameters))
    if row.status == "completed":
        assert row.response_code is not None and row.response_body is not None
        return Replay(row.response_code, row.response_body)
    if not row.lock_free:
        metrics.CONFLICTS.labels("idempotency_in_flight").inc()
        raise idempotency_in_flight()
    await connection.execute(_TAKE_OVER, {"lock_token": lock_token, "id": row.id})
    metrics.IDEMPOTENCY_RECOVERIES.inc()
    logger.info("taking over in-flight idempotency key record %s (previous attempt interrupted)", row.id)
    return Acquired(row.id, lock_token, recovered=True)


async def complete(
    engine: AsyncEngine, acquired: Acquired, status_code: int, body_text: str, resource_id: str | None
) -> bool:
    """Store the response. False if our lock was taken over meanwhile (the answer is still valid)."""
    assert status_code < 500, "5xx answers are never stored: the retry must execute again"
    async with engine.begin() as connection:
        result = await connection.execute(
            text(
                """
                UPDATE idempotency_keys
                SET status = 'completed', response_code = :code, response_body = :body, resource_id = :resource_id,
                    lock_token = NULL, locked_at = NULL, updated_at = now()
                WHERE id = :id AND lock_token = :lock_token
                """
            ),
            {
                "code": status_code,
                "body": body_text,
                "resource_id": resource_id,
                "id": acquired.record_id,
                "lock_token": acquired.lock_token,
            },
        )
    if not result.rowcount:
        logger.warning("idempotency key record %s was taken over before its response was stored", acquired.record_id)
    return bool(result.rowcount)


async def release(engine: AsyncEngine, acquired: Acquired) -> None:
    """Free the lock without storing a response, so a retry executes at once."""
    async with engine.begin() as connection:
        await connection.execute(
            text(
                "UPDATE idempotency_keys SET lock_token = NULL, locked_at = NULL, updated_at = now() "
                "WHERE id = :id AND lock_token = :lock_token AND status = 'in_flight'"
            ),
            {"id": acquired.record_id, "lock_token": acquired.lock_token},
        )


async def sweep_expired(
    engine: AsyncEngine, *, batch_size: int = SWEEP_BATCH_SIZE, batches_max: int = SWEEP_BATCHES_MAX
) -> int:
    """Delete expired keys, in bounded batches; returns how many were deleted.

    An expired in-flight key may be deleted too: a later retry with it executes again, and
    the operation behind it is idempotent on its own (the workflow id).
    """
    deleted_total = 0
    for _ in range(batches_max):
        async with engine.begin() as connection:
            result = await connection.execute(
                text(
                    """
                    DELETE FROM idempotency_keys WHERE id IN (
                        SELECT id FROM idempotency_keys WHERE expires_at <= now()
                        ORDER BY expires_at LIMIT :batch_size FOR UPDATE SKIP LOCKED)
                    """
                ),
                {"batch_size": batch_size},
            )
        deleted_total += result.rowcount
        if result.rowcount < batch_size:
            break
    if deleted_total:
        metrics.IDEMPOTENCY_KEYS_SWEPT.inc(deleted_total)
    return deleted_total
