"""Review resolution: who resolved a review item and why.

Revision ID: 0006_review_resolution
Revises: 0005_webhooks
Create Date: 2026-11-22

An operator's resolution (or Stripe's own answer moving a payment out of NEEDS_REVIEW) closes
the payment's open review items in the same transaction as the transition it causes:
`resolved_at`, `resolution` (what was decided), `resolved_by` (`operator:<name>`,
`stripe-webhook`, ...) and `resolution_note` (why).
"""

from alembic import op

revision = "0006_review_resolution"
down_revision = "0005_webhooks"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.execute("ALTER TABLE review_items ADD COLUMN resolved_by text CHECK (length(resolved_by) <= 200)")
    op.execute("ALTER TABLE review_items ADD COLUMN resolution_note text CHECK (length(resolution_note) <= 1000)")
    op.execute("CREATE INDEX review_items_payment ON review_items (payment_id) WHERE status = 'open'")


def downgrade() -> None:
    op.execute("DROP INDEX review_items_payment")
    op.execute("ALTER TABLE review_items DROP COLUMN resolution_note")
    op.execute("ALTER TABLE review_items DROP COLUMN resolved_by")
