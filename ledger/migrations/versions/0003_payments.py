"""Payments: payments, payment_events (audit log), outbox, review_items, risk_blocklist.

Revision ID: 0003_payments
Revises: 0002_ledger
Create Date: 2026-11-21

- `payments` is the read model of each payment. Its status only changes through the
  transition activity's compare-and-set (expected from-status), in the same transaction as
  the audit row, the ledger entry and the outbox rows.
- `payment_events` is append-only (UPDATE/DELETE refused): who/what/when/why of every
  transition, unique by transition id so an activity retry writes nothing twice.
- `outbox` rows are written in that same transaction and published later; only the
  delivery bookkeeping columns may change.
"""

from alembic import op

revision = "0003_payments"
down_revision = "0002_ledger"
branch_labels = None
depends_on = None


UPGRADE_STATEMENTS = [
    """
    CREATE TABLE payments (
            id                        text PRIMARY KEY CHECK (length(id) <= 64),
            order_id                  text NOT NULL UNIQUE CHECK (length(order_id) BETWEEN 1 AND 200),
            workflow_id               text NOT NULL UNIQUE,
            status                    text NOT NULL,
            amount                    bigint NOT NULL CHECK (amount > 0),
            currency                  text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
            customer                  text NOT NULL,
            capture_method            text NOT NULL CHECK (capture_method IN ('automatic', 'manual')),
            amount_capturable         bigint NOT NULL DEFAULT 0 CHECK (amount_capturable >= 0),
            amount_captured           bigint NOT NULL DEFAULT 0 CHECK (amount_captured >= 0),
            amount_refunded           bigint NOT NULL DEFAULT 0 CHECK (amount_refunded >= 0),
            stripe_payment_intent_id  text UNIQUE,
            stripe_charge_id          text,
            split                     jsonb NOT NULL,
            metadata                  jsonb NOT NULL DEFAULT '{}'::jsonb,
            request_fingerprint       text NOT NULL DEFAULT '',
            failure_code              text,
            failure_message           text,
            version                   integer NOT NULL DEFAULT 1,
            created_at                timestamptz NOT NULL DEFAULT now(),
            updated_at                timestamptz NOT NULL DEFAULT now(),
            CHECK (amount_captured <= amount),
            CHECK (amount_refunded <= amount_captured)
        )
    """,
    """
    CREATE INDEX payments_customer_created ON payments (customer, created_at)
    """,
    """
    CREATE INDEX payments_status_created ON payments (status, created_at)
    """,
    """
    CREATE INDEX payments_created ON payments (created_at, id)
    """,
    """
    CREATE TABLE payment_events (
            id               bigserial PRIMARY KEY,
            payment_id       text NOT NULL REFERENCES payments (id),
            transition_id    text NOT NULL UNIQUE,
            from_status      text,
            to_status        text NOT NULL,
            event            text NOT NULL,
            actor            text NOT NULL,
            reason           text NOT NULL DEFAULT '',
            stripe_event_id  text,
            request_id       text,
            ledger_entry_ids bigint[] NOT NULL DEFAULT '{}',
            details          jsonb NOT NULL DEFAULT '{}'::jsonb,
            created_at       timestamptz NOT NULL DEFAULT now()
        )
    """,
    """
    CREATE INDEX payment_events_payment ON payment_events (payment_id, id)
    """,
    """
    CREATE FUNCTION payments_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
                USING ERRCODE = 'restrict_violation';
        END $$
    """,
    """
    CREATE TRIGGER payment_events_append_only BEFORE UPDATE OR DELETE ON payment_events
            FOR EACH ROW EXECUTE FUNCTION payments_refuse_change()
    """,
    """
    CREATE TABLE outbox (
            id            bigserial PRIMARY KEY,
            topic         text NOT NULL,
            aggregate_id  text NOT NULL,
            dedupe_key    text NOT NULL UNIQUE,
            payload       jsonb NOT NULL,
            created_at    timestamptz NOT NULL DEFAULT now(),
            published_at  timestamptz,
            attempts      integer NOT NULL DEFAULT 0,
            last_error    text
        )
    """,
    """
    CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL
    """,
    """
    CREATE TABLE review_items (
            id           bigserial PRIMARY KEY,
            payment_id   text REFERENCES payments (id),
            dedupe_key   text NOT NULL UNIQUE,
            kind         text NOT NULL,
            reason       text NOT NULL,
            details      jsonb NOT NULL DEFAULT '{}'::jsonb,
            status       text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved')),
            created_at   timestamptz NOT NULL DEFAULT now(),
            resolved_at  timestamptz,
            resolution   text
        )
    """,
    """
    CREATE INDEX review_items_open ON review_items (created_at) WHERE status = 'open'
    """,
    """
    CREATE TABLE risk_blocklist (
            kind        text NOT NULL CHECK (kind IN ('customer', 'payment_method')),
            value       text NOT NULL,
            reason      text NOT NULL DEFAULT '',
            created_at  timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (kind, value)
        )
    """,
]


def upgrade() -> None:
    # One statement per execute: asyncpg prepares each statement and refuses several at once.
    for statement in UPGRADE_STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    op.execute("DROP TABLE risk_blocklist")
    op.execute("DROP TABLE review_items")
    op.execute("DROP TABLE outbox")
    op.execute("DROP TABLE payment_events")
    op.execute("DROP FUNCTION payments_refuse_change() CASCADE")
    op.execute("DROP TABLE payments")
