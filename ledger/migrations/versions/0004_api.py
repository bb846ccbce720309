"""API: API keys (hashed, with a role) and idempotency keys (stored responses).

Revision ID: 0004_api
Revises: 0003_payments
Create Date: 2026-11-21

- `api_keys` never holds a key in plain text: `key_hash` is HMAC-SHA256(pepper, key), hex.
- `idempotency_keys` is one row per (API key, method, path, Idempotency-Key). A row is
  `in_flight` while a request owns it (`lock_token`, `locked_at`) and `completed` once its
  response (code + exact body text) is stored; a row whose lock is free (NULL) or older than
  the lock timeout may be taken over by a retry (crash recovery). `request_fingerprint` is the
  SHA-256 of the canonical JSON body, `parameter_fingerprints` one hash per top-level
  parameter, so a mismatch can be named without storing the body. Rows past `expires_at` are
  treated as absent and swept. (The webhook inbox belongs to the webhooks issue.)
"""

from alembic import op

revision = "0004_api"
down_revision = "0003_payments"
branch_labels = None
depends_on = None


API_KEYS = """
    CREATE TABLE api_keys (
        id          text PRIMARY KEY CHECK (id ~ '^key_[0-9a-f]{16}$'),
        name        text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
        role        text NOT NULL CHECK (role IN ('merchant', 'ops')),
        key_hash    text NOT NULL UNIQUE CHECK (key_hash ~ '^[0-9a-f]{64}$'),
        key_prefix  text NOT NULL CHECK (length(key_prefix) <= 16),
        created_at  timestamptz NOT NULL DEFAULT now(),
        revoked_at  timestamptz
    )
"""

IDEMPOTENCY_KEYS = """
    CREATE TABLE idempotency_keys (
        id                      bigserial PRIMARY KEY,
        api_key_id              text NOT NULL REFERENCES api_keys (id),
        method                  text NOT NULL CHECK (method IN ('POST', 'PUT', 'PATCH', 'DELETE')),
        path                    text NOT NULL CHECK (length(path) BETWEEN 1 AND 500),
        key                     text NOT NULL CHECK (length(key) BETWEEN 1 AND 255),
        request_fingerprint     text NOT NULL CHECK (request_fingerprint ~ '^[0-9a-f]{64}$'),
        parameter_fingerprints  jsonb NOT NULL DEFAULT '{}'::jsonb,
        status                  text NOT NULL CHECK (status IN ('in_flight', 'completed')),
        lock_token              text,
        locked_at               timestamptz,
        response_code           integer CHECK (response_code BETWEEN 100 AND 599),
        response_body           text,
        resource_id             text,
        created_at              timestamptz NOT NULL DEFAULT now(),
        updated_at              timestamptz NOT NULL DEFAULT now(),
        expires_at              timestamptz NOT NULL,
        UNIQUE (api_key_id, method, path, key),
        CHECK ((status = 'completed') = (response_code IS NOT NULL AND response_body IS NOT NULL)),
        CHECK (status = 'in_flight' OR lock_token IS NULL),
        CHECK ((lock_token IS NULL) = (locked_at IS NULL))
    )
"""


def upgrade() -> None:
    # One statement per execute: the asyncpg driver prepares each one.
    op.execute(API_KEYS)
    op.execute(IDEMPOTENCY_KEYS)
    op.execute("CREATE INDEX idempotency_keys_expires ON idempotency_keys (expires_at)")


def downgrade() -> None:
    op.execute("DROP TABLE idempotency_keys")
    op.execute("DROP TABLE api_keys")
