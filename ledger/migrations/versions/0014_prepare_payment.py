"""Payments: a payment's row, its first audit row and outbox event, and the risk screen's reads in
one statement (`prepare_payment`).

Revision ID: 0014_prepare_payment
Revises: 0013_apply_transition
Create Date: 2026-12-06

The `prepare_payment` activity sent BEGIN, the row's insert, the audit row, the outbox row,
the blocklist read, the velocity count and COMMIT: seven round trips through SQLAlchemy. This
function makes the same writes and reads in one statement (its own transaction). The risk
decision stays in Python (activities/payments.py `_risk_decision`, with its named limits);
the function only returns what the decision reads.

Returns one row:
- `created`: the row was inserted (false: the order already had a payment, whose id is
  `payment_id`; nothing was written);
- `blocked_kind`, `blocked_reason`: a blocklist entry of the customer or the payment method
  (when `p_screen`);
- `recent`: the customer's other payments created in the last `p_window_seconds` (when `p_screen`).
"""

from alembic import op

revision = "0014_prepare_payment"
down_revision = "0013_apply_transition"
branch_labels = None
depends_on = None

SIGNATURE = (
    "prepare_payment(text, text, text, bigint, text, text, text, jsonb, jsonb, text, text, text, jsonb, integer,"
    " boolean, text, integer)"
)

UPGRADE = """
CREATE FUNCTION prepare_payment(
    p_id text, p_order_id text, p_workflow_id text, p_amount bigint, p_currency text, p_customer text,
    p_capture_method text, p_split jsonb, p_metadata jsonb, p_fingerprint text,
    p_actor text, p_request_id text, p_details jsonb, p_outbox_schema_version integer,
    p_screen boolean, p_payment_method text, p_window_seconds integer
) RETURNS TABLE (created boolean, payment_id text, blocked_kind text, blocked_reason text, recent bigint)
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_id text;
    v_created boolean;
    v_kind text;
    v_reason text;
    v_recent bigint;
BEGIN
    INSERT INTO payments (id, order_id, workflow_id, status, amount, currency, customer, capture_method, split,
                          metadata, request_fingerprint)
    VALUES (p_id, p_order_id, p_workflow_id, 'CREATED', p_amount, p_currency, p_customer, p_capture_method,
            p_split, p_metadata, p_fingerprint)
    ON CONFLICT (order_id) DO NOTHING
    RETURNING id INTO v_id;
    v_created := FOUND;
    IF v_created THEN
        INSERT INTO payment_events (payment_id, transition_id, from_status, to_status, event, actor, reason,
                                    request_id, ledger_entry_ids, details)
        VALUES (p_id, p_id || ':created', NULL, 'CREATED', 'created', p_actor, 'payment created',
                p_request_id, '{}', p_details);
        -- The payment's first outbox event (activities/payments.py `_append_outbox` writes the same).
        INSERT INTO outbox (topic, aggregate_id, dedupe_key, payload)
        SELECT 'payment.created', p.id, p_id || ':created',
               jsonb_build_object('type', 'payment.created', 'version', p_outbox_schema_version,
                                  'id', p_id || ':created',
                                  'payment_id', p.id, 'order_id', p.order_id, 'status', p.status,
                                  'previous_status', '',
                                  'amount', p.amount, 'currency', p.currency,
                                  'amount_captured', p.amount_captured,
                                  'amount_refunded', p.amount_refunded,
                                  'reason', 'payment created', 'payment_version', p.version,
                                  'occurred_at', now())
          FROM payments p WHERE p.id = p_id
        ON CONFLICT (dedupe_key) DO NOTHING;
    ELSE
        SELECT p.id INTO v_id FROM payments p WHERE p.order_id = p_order_id;
    END IF;
    IF p_screen AND v_id = p_id THEN
        SELECT b.kind, b.reason INTO v_kind, v_reason FROM risk_blocklist b
         WHERE (b.kind = 'customer' AND b.value = p_customer)
            OR (b.kind = 'payment_method' AND b.value = p_payment_method)
         LIMIT 1;
        SELECT count(*) INTO v_recent FROM payments p
         WHERE p.customer = p_customer AND p.id <> p_id
           AND p.created_at > now() - make_interval(secs => p_window_seconds);
    END IF;
    RETURN QUERY SELECT v_created, v_id, v_kind, v_reason, v_recent;
END $$
"""


def upgrade() -> None:
    # Sent as is: the body's ':created' literals are not bind parameters.
    op.get_bind().exec_driver_sql(UPGRADE)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SIGNATURE}")
