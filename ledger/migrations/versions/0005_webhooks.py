"""Webhooks: the inbox of verified Stripe events (`webhook_events`).

Revision ID: 0005_webhooks
Revises: 0004_api
Create Date: 2026-11-21

- A verified event is inserted here BEFORE anything else happens; `event_id` is unique, so a
  repeated delivery stops at the insert (counted as a duplicate).
- `status`: `received` (stored, not yet delivered: the API's own attempt failed or is in
  flight, the relay will deliver it), `delivered` (signalled to every payment it concerns),
  `unrouted` (no payment found: kept with the reason and a review item, never dropped),
  `ignored` (not a payment event, or every payment it concerns has closed), `failed` (the
  relay gave up after its attempt limit: a review item says so).
- `payload` is the verified event as Stripe sent it (jsonb: the signature was checked on the
  raw bytes before parsing, so the exact bytes are not needed afterwards).
"""

from alembic import op

revision = "0005_webhooks"
down_revision = "0004_api"
branch_labels = None
depends_on = None


WEBHOOK_EVENTS = """
    CREATE TABLE webhook_events (
        id                bigserial PRIMARY KEY,
        event_id          text NOT NULL UNIQUE CHECK (length(event_id) BETWEEN 1 AND 255),
        type              text NOT NULL CHECK (length(type) BETWEEN 1 AND 100),
        object_id         text CHECK (length(object_id) <= 255),
        object_type       text CHECK (length(object_type) <= 100),
        livemode          boolean NOT NULL DEFAULT false,
        event_created_at  timestamptz NOT NULL,
        payload           jsonb NOT NULL,
        received_at       timestamptz NOT NULL DEFAULT now(),
        status            text NOT NULL DEFAULT 'received'
                          CHECK (status IN ('received', 'delivered', 'unrouted', 'ignored', 'failed')),
        attempts          integer NOT NULL DEFAULT 0 CHECK (attempts >= 0),
        next_attempt_at   timestamptz NOT NULL DEFAULT now(),
        last_error        text CHECK (length(last_error) <= 1000),
        payment_id        text REFERENCES payments (id),
        payment_ids       text[] NOT NULL DEFAULT '{}',
        delivered_at      timestamptz,
        updated_at        timestamptz NOT NULL DEFAULT now(),
        CHECK ((status = 'delivered') = (delivered_at IS NOT NULL)),
        CHECK (status <> 'unrouted' OR last_error IS NOT NULL)
    )
"""


def upgrade() -> None:
    # One statement per execute: the asyncpg driver prepares each one and refuses several.
    op.execute(WEBHOOK_EVENTS)
    op.execute("CREATE INDEX webhook_events_undelivered ON webhook_events (next_attempt_at) WHERE status = 'received'")
    op.execute("CREATE INDEX webhook_events_unrouted ON webhook_events (received_at) WHERE status = 'unrouted'")
    op.execute("CREATE INDEX webhook_events_payment ON webhook_events (payment_id) WHERE payment_id IS NOT NULL")
    op.execute("CREATE INDEX webhook_events_object ON webhook_events (object_id)")


def downgrade() -> None:
    op.execute("DROP TABLE webhook_events")
