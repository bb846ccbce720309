"""Ledger: the posting functions use generic plans.

Revision ID: 0012_ledger_generic_plans
Revises: 0011_ledger_post_entries
Create Date: 2026-11-22

PL/pgSQL caches a plan per statement, but under the default `plan_cache_mode = auto` a
statement with parameters is planned again for every execution until the generic plan's
estimate looks no worse than the custom plans'. For the ledger's statements over argument
arrays and the postings transition table it never did: `perf` showed PostgreSQL building a
new plan (`BuildCachedPlan`) for them on every entry, about 5 % of the server's CPU. Every
lookup in these functions is by primary or unique key, so one generic plan per statement is
right for a batch of one entry and for a batch of a hundred.

Measured (bench/PROFILE.md, pgbench driving `ledger.post_entries`, one capture entry per
transaction): server time per entry at one client 0.76 → 0.64 ms; entries/s at 8 clients
1,520 → 1,686 at low contention and 1,250 → 1,420 on hot accounts (fresh database per variant,
medians of 3 rounds).

Nothing about what the functions do changes; only how PostgreSQL plans their statements.
"""

from alembic import op

revision = "0012_ledger_generic_plans"
down_revision = "0011_ledger_post_entries"
branch_labels = None
depends_on = None

# The functions on the posting path (0002, 0011). Each runs its statements with generic plans.
FUNCTIONS = (
    "ledger.post_entries(text[], text[], text[], text[], jsonb[], timestamptz[], bigint[], integer[], smallint[],"
    " text[], bigint[], text[], text[], text[], text[], boolean[], jsonb[])",
    "ledger.post_entry(text, text, text, text, jsonb, timestamptz, bigint, text[], bigint[], text[])",
    "ledger.resolve_pending(text, bigint, text, bigint, text)",
    "ledger.apply_postings()",
    "ledger.release_pending()",
    "ledger.check_entry()",
)


def upgrade() -> None:
    for function in FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} SET plan_cache_mode = force_generic_plan")


def downgrade() -> None:
    for function in FUNCTIONS:
        op.execute(f"ALTER FUNCTION {function} RESET plan_cache_mode")
