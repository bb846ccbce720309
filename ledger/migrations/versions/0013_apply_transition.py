"""Payments: a status transition in one statement (`apply_transition`).

Revision ID: 0013_apply_transition
Revises: 0012_ledger_generic_plans
Create Date: 2026-12-06

The `apply_transition` activity sent a transition as up to eight round trips in one
transaction: BEGIN, the retry check, the row's compare-and-set, the authorisation-hold lookup,
the ledger entries, the audit row, the outbox row, COMMIT. Each is a network round trip and,
through SQLAlchemy, a few hundred microseconds of the worker's CPU (bench/PROFILE.md). This
function does the same writes, in the same order and with the same checks, as ONE statement
(its own transaction: the ledger's deferred balance check runs at its end).

Outcomes (nothing is written unless `applied`):
- `already`: this transition id was applied before (a retry whose acknowledgement was lost);
  its status and ledger entry ids are returned;
- `needs_hold`: the payment has an authorisation hold (manual capture), which the caller books
  with the hold's own steps (`activities/payments.py`, the general path);
- `conflict`: the row is not in the expected status; its current status is returned;
- `applied`: row updated, entries posted (`ledger.post_entries`, migration 0011), audit row,
  review item (if any) and, for a status change, one outbox event written.

The caller computes the ledger drafts from the payment's split; `p_split` is that split, and a
row whose split differs (it never changes after the payment is prepared) rolls everything back
with SQLSTATE PN001, so entries can never be booked from a stale split.
"""

from alembic import op

revision = "0013_apply_transition"
down_revision = "0012_ledger_generic_plans"
branch_labels = None
depends_on = None

SIGNATURE = (
    "apply_transition(text, text, text, text, jsonb, text, text, text, text, text, jsonb, text, text, jsonb,"
    " text, integer, jsonb, text, text[], text[], text[], text[], jsonb[], timestamptz[], bigint[], integer[],"
    " smallint[], text[], bigint[], text[], text[], text[], text[], boolean[], jsonb[])"
)

UPGRADE = """
CREATE FUNCTION apply_transition(
    p_transition_id text, p_payment_id text, p_expected_status text, p_to_status text, p_row jsonb,
    p_event text, p_actor text, p_reason text, p_stripe_event_id text, p_request_id text, p_details jsonb,
    p_review_kind text, p_review_reason text, p_review_details jsonb,
    p_outbox_reason text, p_outbox_schema_version integer,
    p_split jsonb, p_hold_key text,
    -- ledger.post_entries' arguments; empty arrays post nothing
    p_keys text[], p_fingerprints text[], p_kinds text[], p_descriptions text[], p_metadata jsonb[],
    p_effective_at timestamptz[], p_reverses bigint[], p_entry_of integer[], p_lines smallint[],
    p_codes text[], p_amounts bigint[], p_currencies text[],
    p_open_codes text[], p_open_types text[], p_open_currencies text[], p_open_limits boolean[],
    p_open_metadata jsonb[]
) RETURNS TABLE (outcome text, status text, ledger_entry_ids bigint[])
LANGUAGE plpgsql
SET plan_cache_mode = force_generic_plan
AS $$
DECLARE
    v_status text;
    v_ids bigint[];
    v_split jsonb;
BEGIN
    SELECT e.to_status, e.ledger_entry_ids INTO v_status, v_ids
      FROM payment_events e WHERE e.transition_id = p_transition_id;
    IF FOUND THEN
        RETURN QUERY SELECT 'already'::text, v_status, v_ids;
        RETURN;
    END IF;
    IF p_hold_key IS NOT NULL AND EXISTS (SELECT 1 FROM ledger.entries x WHERE x.idempotency_key = p_hold_key) THEN
        RETURN QUERY SELECT 'needs_hold'::text, NULL::text, '{}'::bigint[];
        RETURN;
    END IF;
    UPDATE payments p SET
        status = p_to_status,
        amount_capturable = COALESCE((p_row ->> 'amount_capturable')::bigint, p.amount_capturable),
        amount_captured = COALESCE((p_row ->> 'amount_captured')::bigint, p.amount_captured),
        amount_refunded = COALESCE((p_row ->> 'amount_refunded')::bigint, p.amount_refunded),
        stripe_payment_intent_id = COALESCE(p_row ->> 'stripe_payment_intent_id', p.stripe_payment_intent_id),
        stripe_charge_id = COALESCE(p_row ->> 'stripe_charge_id', p.stripe_charge_id),
        failure_code = COALESCE(p_row ->> 'failure_code', p.failure_code),
        failure_message = COALESCE(p_row ->> 'failure_message', p.failure_message),
        dispute_status = COALESCE(p_row ->> 'dispute_status', p.dispute_status),
        version = p.version + 1,
        updated_at = now()
     WHERE p.id = p_payment_id AND p.status = p_expected_status
    RETURNING p.split INTO v_split;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'conflict'::text, (SELECT p.status FROM payments p WHERE p.id = p_payment_id),
                            '{}'::bigint[];
        RETURN;
    END IF;
    IF p_split IS NOT NULL AND v_split IS DISTINCT FROM p_split THEN
        RAISE EXCEPTION 'payment %: its split is not the one the ledger entries were drafted from', p_payment_id
            USING ERRCODE = 'PN001';
    END IF;
    v_ids := '{}';
    IF cardinality(p_keys) > 0 THEN
        SELECT array_agg(r.entry_id ORDER BY r.ord) INTO v_ids
          FROM ledger.post_entries(p_keys, p_fingerprints, p_kinds, p_descriptions, p_metadata, p_effective_at,
                                   p_reverses, p_entry_of, p_lines, p_codes, p_amounts, p_currencies,
                                   p_open_codes, p_open_types, p_open_currencies, p_open_limits,
                                   p_open_metadata) AS r;
    END IF;
    INSERT INTO payment_events (payment_id, transition_id, from_status, to_status, event, actor, reason,
                                stripe_event_id, request_id, ledger_entry_ids, details)
    VALUES (p_payment_id, p_transition_id, p_expected_status, p_to_status, p_event, p_actor, p_reason,
            p_stripe_event_id, p_request_id, v_ids, p_details);
    IF p_review_kind IS NOT NULL THEN
        INSERT INTO review_items (payment_id, dedupe_key, kind, reason, details)
        VALUES (p_payment_id, p_transition_id, p_review_kind, p_review_reason, p_review_details)
        ON CONFLICT (dedupe_key) DO NOTHING;
    END IF;
    IF p_to_status <> p_expected_status THEN
        -- The transition's one outbox event (activities/payments.py `_append_outbox` writes the same).
        INSERT INTO outbox (topic, aggregate_id, dedupe_key, payload)
        SELECT 'payment.' || lower(p_to_status), p.id, p_transition_id,
               jsonb_build_object('type', 'payment.' || lower(p_to_status), 'version', p_outbox_schema_version,
                                  'id', p_transition_id,
                                  'payment_id', p.id, 'order_id', p.order_id, 'status', p.status,
                                  'previous_status', p_expected_status,
                                  'amount', p.amount, 'currency', p.currency,
                                  'amount_captured', p.amount_captured,
                                  'amount_refunded', p.amount_refunded,
                                  'reason', p_outbox_reason, 'payment_version', p.version,
                                  'occurred_at', now())
          FROM payments p WHERE p.id = p_payment_id
        ON CONFLICT (dedupe_key) DO NOTHING;
    END IF;
    RETURN QUERY SELECT 'applied'::text, p_to_status, v_ids;
END $$
"""


def upgrade() -> None:
    op.execute(UPGRADE)


def downgrade() -> None:
    op.execute(f"DROP FUNCTION {SIGNATURE}")
