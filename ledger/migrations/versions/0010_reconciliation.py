"""Reconciliation: runs, Stripe's records staged per run, and the mismatches found.

Revision ID: 0010_reconciliation
Revises: 0009_outbox_delivery
Create Date: 2026-11-22

- `reconciliation_runs`: one row per run of `ReconciliationWorkflow` (daily by the Temporal
  Schedule, or on demand): its window `[window_start, window_end)`, who started it, what was
  fetched from Stripe (`fetched`, per object type), the counts per class (`counts`, matched
  included), the tolerances it used, and when it started and finished.
- `reconciliation_stripe_objects`: Stripe's records for one run, staged with COPY by the fetch
  activities. One row per (run, object type, Stripe id): a retried page inserts nothing twice.
  Only the columns the comparison reads are kept; money is bigint minor units.
- `reconciliation_items`: one row per mismatch per window, unique by
  (window, class, item key), so re-running a window updates the same rows instead of adding
  duplicates; both sides' values are kept as jsonb. `review_item_id` is the review queue item
  (kind `reconciliation_mismatch`) opened for it; `repair` says what was repaired automatically.
- `reconciliation_run_items`: which items each run found (a run's report and counts).
"""

from alembic import op

revision = "0010_reconciliation"
down_revision = "0009_outbox_delivery"
branch_labels = None
depends_on = None


RUNS = """
    CREATE TABLE reconciliation_runs (
        id            text PRIMARY KEY CHECK (id ~ '^recon_[a-z]{24}$'),
        window_start  timestamptz NOT NULL,
        window_end    timestamptz NOT NULL,
        trigger       text NOT NULL CHECK (trigger IN ('schedule', 'api', 'cli')),
        requested_by  text NOT NULL DEFAULT '' CHECK (length(requested_by) <= 200),
        workflow_id   text NOT NULL CHECK (length(workflow_id) <= 300),
        status        text NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'completed')),
        fetched       jsonb NOT NULL DEFAULT '{}'::jsonb,
        counts        jsonb NOT NULL DEFAULT '{}'::jsonb,
        tolerances    jsonb NOT NULL DEFAULT '{}'::jsonb,
        repaired      integer NOT NULL DEFAULT 0 CHECK (repaired >= 0),
        started_at    timestamptz NOT NULL DEFAULT now(),
        finished_at   timestamptz,
        CHECK (window_start < window_end)
    )
"""

STRIPE_OBJECTS = """
    CREATE TABLE reconciliation_stripe_objects (
        run_id                  text NOT NULL REFERENCES reconciliation_runs (id),
        object_type             text NOT NULL,
        stripe_id               text NOT NULL,
        created_at              timestamptz NOT NULL,
        status                  text,
        amount                  bigint,
        amount_received         bigint,
        amount_reversed         bigint,
        application_fee_amount  bigint,
        fee                     bigint,
        net                     bigint,
        currency                text,
        payment_intent          text,
        charge                  text,
        transfer                text,
        destination             text,
        transfer_group          text,
        payout                  text,
        source                  text,
        transaction_type        text,
        automatic               boolean,
        available_on            timestamptz,
        order_id                text,
        payment_id              text,
        penny_refund_id         text,
        PRIMARY KEY (run_id, object_type, stripe_id)
    )
"""

ITEMS = """
    CREATE TABLE reconciliation_items (
        id              bigserial PRIMARY KEY,
        window_start    timestamptz NOT NULL,
        window_end      timestamptz NOT NULL,
        class           text NOT NULL CHECK (length(class) <= 60),
        item_key        text NOT NULL CHECK (length(item_key) <= 600),
        payment_id      text,
        order_id        text,
        stripe_id       text,
        reason          text NOT NULL CHECK (length(reason) <= 1000),
        stripe_values   jsonb NOT NULL DEFAULT '{}'::jsonb,
        penny_values    jsonb NOT NULL DEFAULT '{}'::jsonb,
        first_run_id    text NOT NULL REFERENCES reconciliation_runs (id),
        last_run_id     text NOT NULL REFERENCES reconciliation_runs (id),
        review_item_id  bigint REFERENCES review_items (id),
        repair          text CHECK (length(repair) <= 200),
        created_at      timestamptz NOT NULL DEFAULT now(),
        updated_at      timestamptz NOT NULL DEFAULT now(),
        UNIQUE (window_start, window_end, class, item_key)
    )
"""

RUN_ITEMS = """
    CREATE TABLE reconciliation_run_items (
        run_id   text NOT NULL REFERENCES reconciliation_runs (id),
        item_id  bigint NOT NULL REFERENCES reconciliation_items (id),
        PRIMARY KEY (run_id, item_id)
    )
"""


def upgrade() -> None:
    # One statement per execute: the asyncpg driver prepares each one and refuses several.
    op.execute(RUNS)
    op.execute("CREATE INDEX reconciliation_runs_started ON reconciliation_runs (started_at, id)")
    op.execute(STRIPE_OBJECTS)
    op.execute(
        "CREATE INDEX reconciliation_stripe_objects_intent ON reconciliation_stripe_objects (run_id, payment_intent)"
    )
    op.execute("CREATE INDEX reconciliation_stripe_objects_charge ON reconciliation_stripe_objects (run_id, charge)")
    op.execute("CREATE INDEX reconciliation_stripe_objects_payout ON reconciliation_stripe_objects (run_id, payout)")
    op.execute(ITEMS)
    op.execute("CREATE INDEX reconciliation_items_payment ON reconciliation_items (payment_id)")
    op.execute(RUN_ITEMS)
    # Refunds are selected by creation time for a window; Stripe's charges, transfers, disputes
    # and balance transactions name a payment by its charge id.
    op.execute("CREATE INDEX IF NOT EXISTS refunds_created ON refunds (created_at)")
    op.execute(
        "CREATE INDEX IF NOT EXISTS payments_stripe_charge ON payments (stripe_charge_id) "
        "WHERE stripe_charge_id IS NOT NULL"
    )


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS payments_stripe_charge")
    op.execute("DROP INDEX IF EXISTS refunds_created")
    op.execute("DROP TABLE reconciliation_run_items")
    op.execute("DROP TABLE reconciliation_items")
    op.execute("DROP TABLE reconciliation_stripe_objects")
    op.execute("DROP TABLE reconciliation_runs")
