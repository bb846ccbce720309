"""The idempotency layer and API keys against the real database (no HTTP, no Temporal)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from api import idempotency
from api.errors import ApiError
from penny.keys import create_api_key, find_api_key, revoke_api_key

PEPPER = "test-pepper"
WINDOW_SECONDS = 3600
LOCK_TIMEOUT_SECONDS = 30


async def _key_id(engine: AsyncEngine) -> str:
    async with engine.begin() as connection:
        key = await create_api_key(connection, "merchant", "idempotency test", pepper=PEPPER)
        found = await find_api_key(connection, PEPPER, key)
    assert found is not None
    return found.id


def _scope(api_key_id: str) -> idempotency.Scope:
    return idempotency.Scope(api_key_id, "POST", "/v1/payments", f"key-{uuid.uuid4()}")


async def _acquire(engine: AsyncEngine, scope: idempotency.Scope, body: object) -> object:
    return await idempotency.acquire(
        engine, scope, body, window_seconds=WINDOW_SECONDS, lock_timeout_seconds=LOCK_TIMEOUT_SECONDS
    )


async def test_first_request_executes_then_replays(engine: AsyncEngine) -> None:
    scope = _scope(await _key_id(engine))
    first = await _acquire(engine, scope, {"amount": 100})
    assert isinstance(first, idempotency.Acquired) and not first.recovered
    assert await idempotency.complete(engine, first, 200, '{"id":"pay_1"}', "pay_1")
    replay = await _acquire(engine, scope, {"amount": 100})
    assert replay == idempotency.Replay(200, '{"id":"pay_1"}')


async def test_same_key_different_body_names_the_mismatch(engine: AsyncEngine) -> None:
    scope = _scope(await _key_id(engine))
    first = await _acquire(engine, scope, {"amount": 10000, "currency": "usd"})
    assert isinstance(first, idempotency.Acquired)
    await idempotency.complete(engine, first, 200, "{}", None)
    with pytest.raises(ApiError) as refused:
        await _acquire(engine, scope, {"amount": 20000, "currency": "usd"})
    assert refused.value.status_code == 422
    assert refused.value.detail.type == "idempotency_error"
    assert refused.value.detail.param == "amount"
    assert "amount" in refused.value.detail.message


async def test_in_flight_duplicate_gets_409_with_retry_after(engine: AsyncEngine) -> None:
    scope = _scope(await _key_id(engine))
    assert isinstance(await _acquire(engine, scope, {"a": 1}), idempotency.Acquired)
    with pytest.raises(ApiError) as refused:
        await _acquire(engine, scope, {"a": 1})
    assert refused.value.status_code == 409
    assert refused.value.detail.code == "idempotency_key_in_use"
    assert refused.value.headers["Retry-After"] == "1"


async def test_concurrent_acquires_let_exactly_one_execute(engine: AsyncEngine) -> None:
    scope = _scope(await _key_id(engine))
    outcomes = await asyncio.gather(*(_acquire(engine, scope, {"a": 1}) for _ in range(20)), return_exceptions=True)
    acquired = [outcome for outcome in outcomes if isinstance(outcome, idempotency.Acquired)]
    refused = [outcome for outcome in outcomes if isinstance(outcome, ApiError)]
    assert len(acquired) == 1
    assert len(refused) == 19 and {error.status_code for error in refused} == {409}


async def test_stale_lock_is_taken_over_by_the_retry(engine: AsyncEngine) -> None:
    """A crash between 'start' and 'store response' leaves the key in flight; a retry resumes."""
    scope = _scope(await _key_id(engine))
    crashed = await _acquire(engine, scope, {"a": 1})
    assert isinstance(crashed, idempotency.Acquired)
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE idempotency_keys SET locked_at = now() - interval '1 hour' WHERE id = :id"),
            {"id": crashed.record_id},
        )
    retry = await _acquire(engine, scope, {"a": 1})
    assert isinstance(retry, idempotency.Acquired) and retry.recovered
    # The crashed attempt, if it ever wakes up, can no longer store over the retry's answer.
    assert not await idempotency.complete(engine, crashed, 200, '{"late":true}', None)
    assert await idempotency.complete(engine, retry, 200, '{"ok":true}', None)
    assert await _acquire(engine, scope, {"a": 1}) == idempotency.Replay(200, '{"ok":true}')


async def test_released_key_executes_again_immediately(engine: AsyncEngine) -> None:
    scope = _scope(await _key_id(engine))
    first = await _acquire(engine, scope, {"a": 1})
    assert isinstance(first, idempotency.Acquired)
    await idempotency.release(engine, first)  # e.g. Temporal was unavailable: a 503, nothing stored
    again = await _acquire(engine, scope, {"a": 1})
    assert isinstance(again, idempotency.Acquired) and again.recovered


async def test_expired_keys_act_as_new_and_are_swept(engine: AsyncEngine) -> None:
    scope = _scope(await _key_id(engine))
    first = await _acquire(engine, scope, {"amount": 1})
    assert isinstance(first, idempotency.Acquired)
    await idempotency.complete(engine, first, 200, "{}", None)
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE id = :id"),
            {"id": first.record_id},
        )
    renewed = await _acquire(engine, scope, {"amount": 2})  # a different body is fine once expired
    assert isinstance(renewed, idempotency.Acquired) and not renewed.recovered
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE idempotency_keys SET expires_at = now() - interval '1 second' WHERE id = :id"),
            {"id": renewed.record_id},
        )
    assert await idempotency.sweep_expired(engine, batch_size=1, batches_max=1000) >= 1
    async with engine.connect() as connection:
        left = await connection.execute(text("SELECT count(*) FROM idempotency_keys WHERE expires_at <= now()"))
        assert left.scalar_one() == 0


async def test_api_keys_are_stored_hashed_and_revocable(engine: AsyncEngine) -> None:
    async with engine.begin() as connection:
        key = await create_api_key(connection, "ops", "hash test", pepper=PEPPER)
        stored = (await connection.execute(text("SELECT key_hash, key_prefix, role FROM api_keys"))).all()
        found = await find_api_key(connection, PEPPER, key)
        assert found is not None and found.role == "ops"
        assert await find_api_key(connection, "another-pepper", key) is None
        assert await find_api_key(connection, PEPPER, key + "x") is None
        assert await revoke_api_key(connection, found.id)
        assert await find_api_key(connection, PEPPER, key) is None
    assert all(key not in row.key_hash for row in stored)
    assert all(len(row.key_prefix) < len(key) // 3 for row in stored)
    with pytest.raises(ValueError):
        async with engine.begin() as connection:
            await create_api_key(connection, "admin", "bad role", pepper=PEPPER)


async def test_cli_prints_a_new_key_once_and_stores_only_its_hash(engine: AsyncEngine, database_url: str) -> None:
    environment = {**os.environ, "DATABASE_URL": database_url, "PENNY_API_KEY_PEPPER": PEPPER, "PENNY_ENV": "test"}
    completed = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "penny.cli", "keys", "create", "--role", "ops", "--name", "cli test"],
        capture_output=True,
        text=True,
        env=environment,
        timeout=60,
        check=True,
    )
    key = completed.stdout.strip()
    assert key.startswith("sk_penny_")
    async with engine.connect() as connection:
        found = await find_api_key(connection, PEPPER, key)
        rows = (await connection.execute(text("SELECT t::text FROM api_keys t"))).scalars().all()
    assert found is not None and (found.role, found.name) == ("ops", "cli test")
    assert all(key not in row for row in rows)
