"""Ledger: accounts, entries, postings, balances.

Revision ID: 0002_ledger
Revises: 0001_foundation
Create Date: 2026-11-21
"""

revision = "0002_ledger"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Reserved in the revision chain; filled in by the issue that owns these tables.
    pass


def downgrade() -> None:
    pass
