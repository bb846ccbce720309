"""Payments: payments, payment_events, outbox, review_items.

Revision ID: 0003_payments
Revises: 0002_ledger
Create Date: 2026-11-21
"""

revision = "0003_payments"
down_revision = "0002_ledger"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Reserved in the revision chain; filled in by the issue that owns these tables.
    pass


def downgrade() -> None:
    pass
