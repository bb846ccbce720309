"""Foundation: the service heartbeat table used by health checks and the demo.

Revision ID: 0001_foundation
Revises:
Create Date: 2026-11-21
"""

from alembic import op

revision = "0001_foundation"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A tiny table the worker's health-check activity writes to, proving the
    # worker -> Postgres path works end to end (used by `penny demo` and the smoke test).
    op.execute(
        """
        CREATE TABLE service_heartbeats (
            id          bigserial PRIMARY KEY,
            source      text        NOT NULL CHECK (length(source) BETWEEN 1 AND 200),
            recorded_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )


def downgrade() -> None:
    op.execute("DROP TABLE service_heartbeats")
