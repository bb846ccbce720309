"""API keys: created once, shown once, stored only as HMAC-SHA256(pepper, key).

A key looks like `sk_penny_<43 url-safe characters>` (256 random bits). The database keeps
its HMAC under the deployment's pepper (`PENNY_API_KEY_PEPPER`), so a leaked table does not
reveal usable keys, and a lookup by hash cannot be timed to guess one: the hash is keyed.
The stored and computed hashes are still compared in constant time.

Roles: `merchant` (create, capture, cancel and read payments) and `ops` (read payments and
the ledger, operate the review queue and reconciliation).

A key's use is recorded in `last_used_at`, at most once per LAST_USED_RESOLUTION_SECONDS (one
conditional UPDATE), so a busy key does not cost a write per request. A revoked key
(`revoked_at` set) is never found again: its requests are 401 from the next one on.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

Role = Literal["merchant", "ops"]
ROLES: tuple[Role, ...] = ("merchant", "ops")
KEY_PREFIX = "sk_penny_"
KEY_RANDOM_BYTES = 32
KEY_LENGTH_MAX = 200  # anything longer is not one of ours: refused before hashing
DISPLAY_PREFIX_LENGTH = 13  # "sk_penny_" + 4 characters: enough to recognise a key in a list
LAST_USED_RESOLUTION_SECONDS = 60
API_KEYS_LISTED_MAX = 1000


@dataclass(frozen=True)
class ApiKey:
    id: str
    name: str
    role: Role


def hash_api_key(pepper: str, key: str) -> str:
    return hmac.new(pepper.encode(), key.encode(), hashlib.sha256).hexdigest()


def generate_api_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(KEY_RANDOM_BYTES)


async def create_api_key(connection: AsyncConnection, role: str, name: str, *, pepper: str | None = None) -> str:
    """Store a new key's hash with `role` and return the key itself (shown once, never stored).

    `pepper` defaults to the configured `PENNY_API_KEY_PEPPER`. The caller commits.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    if not 1 <= len(name) <= 200:
        raise ValueError("name must be 1..200 characters")
    if pepper is None:
        from penny.settings import get_settings

        pepper = get_settings().api_key_pepper
    key = generate_api_key()
    await connection.execute(
        text(
            "INSERT INTO api_keys (id, name, role, key_hash, key_prefix) "
            "VALUES (:id, :name, :role, :key_hash, :key_prefix)"
        ),
        {
            "id": f"key_{secrets.token_hex(8)}",
            "name": name,
            "role": role,
            "key_hash": hash_api_key(pepper, key),
            "key_prefix": key[:DISPLAY_PREFIX_LENGTH],
        },
    )
    return key


async def find_api_key(connection: AsyncConnection, pepper: str, key: str) -> ApiKey | None:
    """The active key matching `key`, or None. Constant-time comparison of the hashes."""
    if not key.startswith(KEY_PREFIX) or len(key) > KEY_LENGTH_MAX:
        return None
    computed = hash_api_key(pepper, key)
    row = (
        await connection.execute(
            text("SELECT id, name, role, key_hash FROM api_keys WHERE key_hash = :key_hash AND revoked_at IS NULL"),
            {"key_hash": computed},
        )
    ).one_or_none()
    if row is None or not hmac.compare_digest(row.key_hash, computed):
        return None
    return ApiKey(id=row.id, name=row.name, role=row.role)


async def revoke_api_key(connection: AsyncConnection, key_id: str) -> bool:
    """Revoke the key; False when there is no such active key. The caller commits."""
    result = await connection.execute(
        text("UPDATE api_keys SET revoked_at = now() WHERE id = :id AND revoked_at IS NULL"), {"id": key_id}
    )
    return bool(result.rowcount)


async def record_api_key_use(connection: AsyncConnection, key_id: str) -> bool:
    """Set `last_used_at` to now unless it was set less than LAST_USED_RESOLUTION_SECONDS ago.

    True when the row was written. The condition sits in the UPDATE itself, so concurrent
    requests (in any process) write at most once per interval. The caller commits.
    """
    result = await connection.execute(
        text(
            f"""
            UPDATE api_keys SET last_used_at = now()
             WHERE id = :id
               AND (last_used_at IS NULL OR last_used_at < now() - interval '{LAST_USED_RESOLUTION_SECONDS} seconds')
            """
        ),
        {"id": key_id},
    )
    return bool(result.rowcount)


@dataclass(frozen=True)
class ApiKeyRecord:
    """What `penny keys list` shows of a key: never the key, nor its hash."""

    id: str
    name: str
    role: Role
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


_RECORD_COLUMNS = "id, name, role, key_prefix, created_at, last_used_at, revoked_at"


def _record(row: Any) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row.id,
        name=row.name,
        role=row.role,
        prefix=row.key_prefix,
        created_at=row.created_at,
        last_used_at=row.last_used_at,
        revoked_at=row.revoked_at,
    )


async def list_api_keys(connection: AsyncConnection, limit: int = API_KEYS_LISTED_MAX) -> list[ApiKeyRecord]:
    """Keys oldest first, revoked ones included, at most `limit`."""
    rows = await connection.execute(
        text(f"SELECT {_RECORD_COLUMNS} FROM api_keys ORDER BY created_at, id LIMIT :limit"), {"limit": limit}
    )
    return [_record(row) for row in rows]


async def api_key_record(connection: AsyncConnection, key_id: str) -> ApiKeyRecord | None:
    row = (
        await connection.execute(text(f"SELECT {_RECORD_COLUMNS} FROM api_keys WHERE id = :id"), {"id": key_id})
    ).one_or_none()
    return _record(row) if row is not None else None
