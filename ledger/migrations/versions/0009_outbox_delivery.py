"""Outbox delivery: subscribers (webhook endpoints), their signing secrets, one delivery per event and endpoint.

Revision ID: 0009_outbox_delivery
Revises: 0008_review_queue
Create Date: 2026-11-23

- `webhook_endpoints`: a subscriber's URL and the event types it wants (`payment.<status>`
  or `*`). Never deleted: DELETE through the API sets `deleted_at` (soft delete), so the
  delivery history keeps its endpoint; a deleted or disabled endpoint gets no new deliveries.
- `webhook_endpoint_secrets`: the endpoint's signing secrets. The relay must compute HMACs
  with them, so they are stored as they are (like Stripe's own endpoint secrets): whoever can
  read this table can forge Penny's signatures. A secret is active while `expires_at` is NULL
  or in the future; during a roll the old one keeps signing until it expires.
- `outbox_deliveries`: one row per (outbox event, endpoint), created by the relay in the
  same transaction that sets the event's `outbox.published_at`. `pending` → `delivered`
  (2xx) or `dead` (attempts exhausted: a `delivery_dead_letter` review item); `canceled` when
  its endpoint is deleted first. `redeliver` puts a dead or delivered one back to `pending`
  with its attempts reset, and records who asked and when (`redelivered_by`, `redelivered_at`,
  `redeliveries`). While pending, `next_attempt_at` is when it is due, or the end of the lease
  of the relay that claimed it (`claim_token`).
"""

from alembic import op

revision = "0009_outbox_delivery"
down_revision = "0008_review_queue"
branch_labels = None
depends_on = None


WEBHOOK_ENDPOINTS = """
    CREATE TABLE webhook_endpoints (
        id              text PRIMARY KEY CHECK (id ~ '^we_[a-z]{24}$'),
        url             text NOT NULL CHECK (length(url) BETWEEN 1 AND 2048),
        description     text NOT NULL DEFAULT '' CHECK (length(description) <= 500),
        enabled_events  text[] NOT NULL CHECK (cardinality(enabled_events) BETWEEN 1 AND 32),
        status          text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
        created_by      text NOT NULL CHECK (length(created_by) <= 200),
        created_at      timestamptz NOT NULL DEFAULT now(),
        updated_at      timestamptz NOT NULL DEFAULT now(),
        deleted_at      timestamptz,
        deleted_by      text CHECK (length(deleted_by) <= 200)
    )
"""

WEBHOOK_ENDPOINT_SECRETS = """
    CREATE TABLE webhook_endpoint_secrets (
        id           bigserial PRIMARY KEY,
        endpoint_id  text NOT NULL REFERENCES webhook_endpoints (id),
        secret       text NOT NULL UNIQUE CHECK (secret ~ '^whsec_[A-Za-z]{32,64}$'),
        created_at   timestamptz NOT NULL DEFAULT now(),
        expires_at   timestamptz
    )
"""

OUTBOX_DELIVERIES = """
    CREATE TABLE outbox_deliveries (
        id                text PRIMARY KEY CHECK (id ~ '^wd_[a-z]{24}$'),
        outbox_id         bigint NOT NULL REFERENCES outbox (id),
        endpoint_id       text NOT NULL REFERENCES webhook_endpoints (id),
        payment_id        text NOT NULL,
        event_id          text NOT NULL,
        event_type        text NOT NULL,
        status            text NOT NULL DEFAULT 'pending'
                          CHECK (status IN ('pending', 'delivered', 'dead', 'canceled')),
        attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        next_attempt_at   timestamptz NOT NULL DEFAULT now(),
        claim_token       text,
        last_attempt_at   timestamptz,
        last_status_code  integer CHECK (last_status_code BETWEEN 100 AND 599),
        last_error        text CHECK (length(last_error) <= 1000),
        delivered_at      timestamptz,
        redeliveries      integer NOT NULL DEFAULT 0 CHECK (redeliveries >= 0),
        redelivered_at    timestamptz,
        redelivered_by    text CHECK (length(redelivered_by) <= 200),
        created_at        timestamptz NOT NULL DEFAULT now(),
        updated_at        timestamptz NOT NULL DEFAULT now(),
        UNIQUE (outbox_id, endpoint_id),
        CHECK ((status = 'delivered') = (delivered_at IS NOT NULL))
    )
"""


def upgrade() -> None:
    # One statement per execute: the asyncpg driver prepares each one and refuses several.
    op.execute(WEBHOOK_ENDPOINTS)
    op.execute("CREATE INDEX webhook_endpoints_live ON webhook_endpoints (created_at, id) WHERE deleted_at IS NULL")
    op.execute(WEBHOOK_ENDPOINT_SECRETS)
    op.execute("CREATE INDEX webhook_endpoint_secrets_endpoint ON webhook_endpoint_secrets (endpoint_id, id)")
    op.execute(OUTBOX_DELIVERIES)
    # Due deliveries, oldest first.
    op.execute(
        "CREATE INDEX outbox_deliveries_due ON outbox_deliveries (next_attempt_at, outbox_id) WHERE status = 'pending'"
    )
    # Order per payment per endpoint: "is an earlier delivery of this payment to this endpoint pending?"
    op.execute(
        "CREATE INDEX outbox_deliveries_chain ON outbox_deliveries (endpoint_id, payment_id, outbox_id) "
        "WHERE status = 'pending'"
    )
    op.execute("CREATE INDEX outbox_deliveries_endpoint ON outbox_deliveries (endpoint_id, created_at, id)")
    # "Is an earlier event of this payment not fanned out yet?" (a concurrent relay holds it).
    op.execute("CREATE INDEX outbox_unpublished_aggregate ON outbox (aggregate_id, id) WHERE published_at IS NULL")


def downgrade() -> None:
    op.execute("DROP INDEX outbox_unpublished_aggregate")
    op.execute("DROP TABLE outbox_deliveries")
    op.execute("DROP TABLE webhook_endpoint_secrets")
    op.execute("DROP TABLE webhook_endpoints")
