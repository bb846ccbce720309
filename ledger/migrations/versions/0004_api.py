"""API: idempotency keys, API keys, webhook inbox.

Revision ID: 0004_api
Revises: 0003_payments
Create Date: 2026-11-21
"""

revision = "0004_api"
down_revision = "0003_payments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Reserved in the revision chain; filled in by the issue that owns these tables.
    pass


def downgrade() -> None:
    pass
