"""Refunds, and the payment's dispute status.

Revision ID: 0007_refunds
Revises: 0006_review_resolution
Create Date: 2026-11-22

One row per refund asked for (`rf_` + letters, derived by the API from the request's
Idempotency-Key), written by the payment workflow's `apply_transition` in the same transaction
as the ledger entries it books: its exact parts (platform fee, tax, each recipient), Stripe's
refund id and status, the recipients' transfer reversals. A refund is never deleted; a failed
one stays `failed` with Stripe's reason. `payments.dispute_status` is Stripe's status of the
payment's latest dispute (NULL when there was none).
"""

from alembic import op

revision = "0007_refunds"
down_revision = "0006_review_resolution"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute(
        """
        CREATE TABLE refunds (
            id                text PRIMARY KEY CHECK (id ~ '^rf_[a-z]{24}$'),
            payment_id        text NOT NULL REFERENCES payments (id),
            amount            bigint NOT NULL CHECK (amount > 0),
            currency          text NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
            reason            text CHECK (reason IN ('duplicate', 'fraudulent', 'requested_by_customer')),
            status            text NOT NULL CHECK (status IN ('pending', 'succeeded', 'failed')),
            parts             jsonb NOT NULL,
            recoveries        jsonb NOT NULL DEFAULT '[]'::jsonb,
            stripe_refund_id  text UNIQUE,
            failure_reason    text CHECK (length(failure_reason) <= 500),
            request_id        text,
            created_at        timestamptz NOT NULL DEFAULT now(),
            updated_at        timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    op.execute("CREATE INDEX refunds_payment ON refunds (payment_id, created_at, id)")
    op.execute("ALTER TABLE payments ADD COLUMN dispute_status text CHECK (length(dispute_status) <= 40)")


def downgrade() -> None:
    op.execute("ALTER TABLE payments DROP COLUMN dispute_status")
    op.execute("DROP TABLE refunds")
