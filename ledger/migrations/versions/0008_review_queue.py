"""Review queue operations: the audit trail of operators' actions, final resolutions, key use.

Revision ID: 0008_review_queue
Revises: 0007_refunds
Create Date: 2026-11-23

- `review_actions` is append-only (UPDATE, DELETE and TRUNCATE refused, like `payment_events`):
  one row per review item an operator's resolve request changed — who (`actor`, the API key or
  `cli`), when, why (`note`), the action and what it did (`effect`, the payment's status before
  and after). `request_key` names the request (the API key and its Idempotency-Key, or one CLI
  run); unique per item, so a retried request writes nothing twice.
- `review_items` are never deleted (DELETE and TRUNCATE refused), and a resolution is final: a
  resolved item cannot be changed, and an item is resolved only with who, when and how
  (`resolved_by`, `resolved_at`, `resolution`).
- `api_keys.last_used_at`: when the key last authenticated a request, written at most once a
  minute per key (the API's conditional UPDATE), so a busy key costs no write per request.
"""

from alembic import op

revision = "0008_review_queue"
down_revision = "0007_refunds"
branch_labels = None
depends_on = None


REVIEW_ACTIONS = """
    CREATE TABLE review_actions (
        id                     bigserial PRIMARY KEY,
        review_id              bigint NOT NULL REFERENCES review_items (id),
        request_key            text NOT NULL CHECK (length(request_key) BETWEEN 1 AND 200),
        action                 text NOT NULL CHECK (action IN (
                                   'captured', 'authorized', 'failed', 'canceled', 'retry',
                                   'acknowledged', 'dismissed')),
        note                   text NOT NULL CHECK (length(note) BETWEEN 1 AND 1000),
        actor                  text NOT NULL CHECK (length(actor) BETWEEN 1 AND 200),
        api_key_id             text REFERENCES api_keys (id),
        via                    text NOT NULL CHECK (via IN ('api', 'cli')),
        payment_id             text REFERENCES payments (id),
        payment_status_before  text,
        payment_status_after   text,
        effect                 text NOT NULL CHECK (length(effect) BETWEEN 1 AND 1000),
        request_id             text CHECK (length(request_id) <= 100),
        created_at             timestamptz NOT NULL DEFAULT now(),
        UNIQUE (request_key, review_id),
        CHECK ((via = 'api') = (api_key_id IS NOT NULL))
    )
"""

REVIEW_ITEMS_GUARD = """
    CREATE FUNCTION review_items_guard() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF TG_OP IN ('DELETE', 'TRUNCATE') THEN
                RAISE EXCEPTION 'review_items are never deleted (% refused): resolve them', TG_OP
                    USING ERRCODE = 'restrict_violation';
            END IF;
            IF OLD.status = 'resolved' THEN
                RAISE EXCEPTION 'review item % is resolved: a resolution is final', OLD.id
                    USING ERRCODE = 'restrict_violation';
            END IF;
            IF NEW.status = 'resolved'
               AND (NEW.resolved_at IS NULL OR NEW.resolution IS NULL OR NEW.resolved_by IS NULL) THEN
                RAISE EXCEPTION 'review item % resolved without resolved_at, resolution and resolved_by', OLD.id
                    USING ERRCODE = 'check_violation';
            END IF;
            RETURN NEW;
        END $$
"""


def upgrade() -> None:
    # One statement per execute: the asyncpg driver prepares each one and refuses several.
    op.execute(REVIEW_ACTIONS)
    op.execute("CREATE INDEX review_actions_review ON review_actions (review_id, id)")
    op.execute(
        "CREATE TRIGGER review_actions_append_only BEFORE UPDATE OR DELETE ON review_actions "
        "FOR EACH ROW EXECUTE FUNCTION payments_refuse_change()"
    )
    op.execute(
        "CREATE TRIGGER review_actions_no_truncate BEFORE TRUNCATE ON review_actions "
        "FOR EACH STATEMENT EXECUTE FUNCTION payments_refuse_change()"
    )
    op.execute(REVIEW_ITEMS_GUARD)
    op.execute(
        "CREATE TRIGGER review_items_guard BEFORE UPDATE OR DELETE ON review_items "
        "FOR EACH ROW EXECUTE FUNCTION review_items_guard()"
    )
    op.execute(
        "CREATE TRIGGER review_items_no_truncate BEFORE TRUNCATE ON review_items "
        "FOR EACH STATEMENT EXECUTE FUNCTION review_items_guard()"
    )
    # The queue is listed newest first, filtered by status, kind or payment.
    op.execute("CREATE INDEX review_items_status_id ON review_items (status, id)")
    op.execute("CREATE INDEX review_items_kind_id ON review_items (kind, id)")
    op.execute("CREATE INDEX review_items_payment_id ON review_items (payment_id, id)")
    op.execute("ALTER TABLE api_keys ADD COLUMN last_used_at timestamptz")


def downgrade() -> None:
    op.execute("ALTER TABLE api_keys DROP COLUMN last_used_at")
    op.execute("DROP INDEX review_items_payment_id")
    op.execute("DROP INDEX review_items_kind_id")
    op.execute("DROP INDEX review_items_status_id")
    op.execute("DROP TRIGGER review_items_no_truncate ON review_items")
    op.execute("DROP TRIGGER review_items_guard ON review_items")
    op.execute("DROP FUNCTION review_items_guard()")
    op.execute("DROP TABLE review_actions")
