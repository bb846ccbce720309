"""The reconciliation comparison, in SQL: Stripe's staged records against payments, refunds and the ledger.

Every statement is set-based and runs in ONE transaction (activities/reconciliation.py,
`compare`). Each class statement inserts what it finds into the temporary table `recon_found`
(class, item key, both sides' values); the subjects compared (PaymentIntents, refunds, transfer
groups, disputes, payouts) go into `recon_subjects`, so `matched` is the subjects without an item.

Parameters: `:run_id`, the window `:ws`/`:we` (timestamptz, start inclusive, end exclusive),
`:as_of` (when the comparison runs), the tolerances `:amount_tolerance`, `:fee_tolerance` (minor
units) and `:settlement_late_seconds` (a float, as Postgres' make_interval takes it; `:threshold_seconds`
is the same as an integer, for the report).

Anchoring: an item belongs to the window of the record that makes it (the Stripe object's
`created`, or Penny's `created_at` for what only Penny has); its counterpart is looked up
whatever its own time (Stripe records are fetched with a margin either side of the window).
"""

from __future__ import annotations

# Penny statuses meaning "money was captured" and those a missed webhook can still move forward.
CAPTURED_STATUSES = ("CAPTURED", "SETTLED", "PARTIALLY_REFUNDED", "REFUNDED", "DISPUTED", "REVERSED")
AWAITING_STRIPE_STATUSES = ("CREATED", "REQUIRES_PAYMENT_METHOD", "REQUIRES_ACTION", "PROCESSING", "AUTHORIZED")


def _in(values: tuple[str, ...]) -> str:
    assert all(value.isalpha() or "_" in value for value in values), values
    return "(" + ", ".join(f"'{value}'" for value in values) + ")"


CAPTURED = f"(p.amount_captured > 0 OR p.status IN {_in(CAPTURED_STATUSES)})"
AWAITING = f"p.status IN {_in(AWAITING_STRIPE_STATUSES)}"

CREATE_TEMPORARY = [
    """
    CREATE TEMPORARY TABLE recon_found (
        class          text NOT NULL,
        item_key       text NOT NULL,
        subject        text NOT NULL,
        payment_id     text,
        order_id       text,
        stripe_id      text,
        reason         text NOT NULL,
        stripe_values  jsonb NOT NULL,
        penny_values   jsonb NOT NULL,
        PRIMARY KEY (class, item_key)
    ) ON COMMIT DROP
    """,
    "CREATE TEMPORARY TABLE recon_subjects (subject text PRIMARY KEY) ON COMMIT DROP",
    # This run's Stripe records (the staging table is shared by every run).
    """
    CREATE TEMPORARY TABLE recon_stripe ON COMMIT DROP AS
    SELECT * FROM reconciliation_stripe_objects WHERE run_id = :run_id
    """,
    "CREATE INDEX ON recon_stripe (object_type, stripe_id)",
    "CREATE INDEX ON recon_stripe (object_type, source)",
    "CREATE INDEX ON recon_stripe (object_type, payout)",
    # PaymentIntents of one order that moved money, beyond the one Penny's payment names.
    """
    CREATE TEMPORARY TABLE recon_extra_intents ON COMMIT DROP AS
    SELECT s.stripe_id, s.order_id
      FROM recon_stripe s
      LEFT JOIN payments p ON p.order_id = s.order_id
     WHERE s.object_type = 'payment_intent' AND s.status IN ('succeeded', 'requires_capture')
       AND s.order_id IS NOT NULL
       AND s.stripe_id IS DISTINCT FROM p.stripe_payment_intent_id
       AND EXISTS (SELECT 1 FROM recon_stripe o
                    WHERE o.object_type = 'payment_intent' AND o.status IN ('succeeded', 'requires_capture')
                      AND o.order_id = s.order_id AND o.stripe_id <> s.stripe_id)
    """,
]

# Two (or more) PaymentIntents that moved money for one order: one item per order.
DUPLICATE_CHARGE = """
INSERT INTO recon_found
SELECT 'duplicate_charge', g.order_id, 'order:' || g.order_id, p.id, g.order_id, g.extra_ids,
       format('%s PaymentIntents moved money for order %s', g.charged, g.order_id),
       jsonb_build_object('payment_intents', g.intents),
       CASE WHEN p.id IS NULL THEN '{}'::jsonb ELSE jsonb_build_object(
           'payment_id', p.id, 'status', p.status, 'payment_intent', p.stripe_payment_intent_id,
           'amount_captured', p.amount_captured, 'currency', p.currency) END
  FROM (
      SELECT s.order_id, count(*) AS charged, max(s.created_at) AS last_created, min(s.created_at) AS first_created,
             string_agg(s.stripe_id, ',' ORDER BY s.stripe_id)
                 FILTER (WHERE s.stripe_id IN (SELECT stripe_id FROM recon_extra_intents)) AS extra_ids,
             jsonb_agg(jsonb_build_object('payment_intent', s.stripe_id, 'status', s.status,
                                          'amount_received', s.amount_received, 'currency', upper(s.currency))
                       ORDER BY s.stripe_id) AS intents
        FROM recon_stripe s
       WHERE s.object_type = 'payment_intent' AND s.status IN ('succeeded', 'requires_capture')
         AND s.order_id IS NOT NULL
       GROUP BY s.order_id
      HAVING count(*) > 1
  ) g
  LEFT JOIN payments p ON p.order_id = g.order_id
 WHERE EXISTS (SELECT 1 FROM recon_stripe s
                WHERE s.object_type = 'payment_intent' AND s.order_id = g.order_id
                  AND s.status IN ('succeeded', 'requires_capture')
                  AND s.created_at >= :ws AND s.created_at < :we)
"""

# Stripe says succeeded; Penny has no payment for the PaymentIntent, or has not captured it.
PENNY_MISSING = f"""
INSERT INTO recon_found
SELECT 'penny_missing_or_not_captured', s.stripe_id, 'pi:' || s.stripe_id, p.id, s.order_id, s.stripe_id,
       CASE WHEN p.id IS NULL
            THEN format('Stripe PaymentIntent %s succeeded (%s %s); Penny has no payment for it',
                        s.stripe_id, s.amount_received, upper(s.currency))
            ELSE format('Stripe PaymentIntent %s succeeded (%s %s); Penny''s payment %s is %s',
                        s.stripe_id, s.amount_received, upper(s.currency), p.id, p.status) END,
       jsonb_build_object('payment_intent', s.stripe_id, 'status', s.status, 'amount_received', s.amount_received,
                          'currency', upper(s.currency), 'order_id', s.order_id, 'payment_id', s.payment_id),
       CASE WHEN p.id IS NULL THEN '{{}}'::jsonb ELSE jsonb_build_object(
           'payment_id', p.id, 'status', p.status, 'amount_captured', p.amount_captured, 'currency', p.currency,
           'payment_intent', p.stripe_payment_intent_id) END
  FROM recon_stripe s
  LEFT JOIN LATERAL (
      SELECT * FROM payments p
       WHERE p.stripe_payment_intent_id = s.stripe_id OR (s.order_id IS NOT NULL AND p.order_id = s.order_id)
       ORDER BY (p.stripe_payment_intent_id = s.stripe_id) DESC NULLS LAST
       LIMIT 1
  ) p ON true
 WHERE s.object_type = 'payment_intent' AND s.status = 'succeeded'
   AND s.created_at >= :ws AND s.created_at < :we
   AND s.stripe_id NOT IN (SELECT stripe_id FROM recon_extra_intents)
   AND (p.id IS NULL OR NOT {CAPTURED})
"""

# Penny captured; Stripe's PaymentIntent is missing or did not succeed.
STRIPE_FAILED_OR_MISSING = f"""
INSERT INTO recon_found
SELECT 'stripe_failed_or_missing', p.id, 'pi:' || coalesce(p.stripe_payment_intent_id, p.id), p.id, p.order_id,
       p.stripe_payment_intent_id,
       CASE WHEN s.stripe_id IS NULL
            THEN format('Penny captured %s %s for payment %s; Stripe has no PaymentIntent %s in the window',
                        p.amount_captured, p.currency, p.id, coalesce(p.stripe_payment_intent_id, '(none)'))
            ELSE format('Penny captured %s %s for payment %s; Stripe''s PaymentIntent %s is %s',
                        p.amount_captured, p.currency, p.id, s.stripe_id, s.status) END,
       CASE WHEN s.stripe_id IS NULL THEN '{{}}'::jsonb ELSE jsonb_build_object(
           'payment_intent', s.stripe_id, 'status', s.status, 'amount_received', s.amount_received,
           'currency', upper(s.currency)) END,
       jsonb_build_object('payment_id', p.id, 'status', p.status, 'amount_captured', p.amount_captured,
                          'currency', p.currency, 'payment_intent', p.stripe_payment_intent_id)
  FROM payments p
  LEFT JOIN recon_stripe s ON s.object_type = 'payment_intent' AND s.stripe_id = p.stripe_payment_intent_id
 WHERE p.created_at >= :ws AND p.created_at < :we AND {CAPTURED}
   AND (s.stripe_id IS NULL OR s.status <> 'succeeded')
"""

# Both sides agree money moved: compare amount, currency and Stripe's fee.
PAIRS = f"""
CREATE TEMPORARY TABLE recon_pairs ON COMMIT DROP AS
SELECT s.stripe_id AS intent_id, s.amount_received, upper(s.currency) AS stripe_currency, s.charge AS charge_id,
       p.id AS payment_id, p.order_id, p.status, p.amount_captured, p.currency AS penny_currency,
       (SELECT sum(po.amount) FROM ledger.entries e JOIN ledger.postings po ON po.entry_id = e.id
         WHERE e.idempotency_key = format('payment:%s:capture', p.id) AND po.amount > 0) AS ledger_captured,
       (SELECT sum(po.amount) FROM ledger.entries e JOIN ledger.postings po ON po.entry_id = e.id
         WHERE e.idempotency_key = format('payment:%s:processing_fee', p.id) AND po.amount > 0) AS ledger_fee,
       (SELECT b.fee FROM recon_stripe b
         WHERE b.object_type = 'balance_transaction' AND b.source = s.charge AND b.transaction_type = 'charge'
         LIMIT 1) AS stripe_fee
  FROM recon_stripe s
  JOIN payments p ON p.stripe_payment_intent_id = s.stripe_id
 WHERE s.object_type = 'payment_intent' AND s.status = 'succeeded' AND {CAPTURED}
   AND ((s.created_at >= :ws AND s.created_at < :we) OR (p.created_at >= :ws AND p.created_at < :we))
"""

AMOUNT_MISMATCH = """
INSERT INTO recon_found
SELECT 'amount_mismatch', intent_id, 'pi:' || intent_id, payment_id, order_id, intent_id,
       format('Stripe received %s %s on %s; Penny captured %s (ledger %s)',
              amount_received, stripe_currency, intent_id, amount_captured, coalesce(ledger_captured::text, 'none')),
       jsonb_build_object('payment_intent', intent_id, 'amount_received', amount_received),
       jsonb_build_object('payment_id', payment_id, 'amount_captured', amount_captured,
                          'ledger_captured', ledger_captured)
  FROM recon_pairs
 WHERE abs(amount_received - amount_captured) > :amount_tolerance
    OR abs(amount_received - coalesce(ledger_captured, 0)) > :amount_tolerance
"""

CURRENCY_MISMATCH = """
INSERT INTO recon_found
SELECT 'currency_mismatch', intent_id, 'pi:' || intent_id, payment_id, order_id, intent_id,
       format('Stripe charged %s on %s; Penny''s payment is in %s', stripe_currency, intent_id, penny_currency),
       jsonb_build_object('payment_intent', intent_id, 'currency', stripe_currency),
       jsonb_build_object('payment_id', payment_id, 'currency', penny_currency)
  FROM recon_pairs
 WHERE stripe_currency <> penny_currency
"""

# Only where Stripe's balance transaction for the charge was fetched (its fee is known).
FEE_MISMATCH = """
INSERT INTO recon_found
SELECT 'fee_mismatch', intent_id, 'pi:' || intent_id, payment_id, order_id, charge_id,
       format('Stripe''s fee on %s is %s; Penny booked %s', charge_id, stripe_fee, coalesce(ledger_fee, 0)),
       jsonb_build_object('charge', charge_id, 'fee', stripe_fee),
       jsonb_build_object('payment_id', payment_id, 'processing_fee', coalesce(ledger_fee, 0))
  FROM recon_pairs
 WHERE stripe_fee IS NOT NULL AND abs(stripe_fee - coalesce(ledger_fee, 0)) > :fee_tolerance
"""

PI_SUBJECTS = f"""
INSERT INTO recon_subjects
SELECT 'pi:' || s.stripe_id FROM recon_stripe s
 WHERE s.object_type = 'payment_intent' AND s.status = 'succeeded'
   AND s.created_at >= :ws AND s.created_at < :we
   AND s.stripe_id NOT IN (SELECT stripe_id FROM recon_extra_intents)
UNION
SELECT 'pi:' || coalesce(p.stripe_payment_intent_id, p.id) FROM payments p
 WHERE p.created_at >= :ws AND p.created_at < :we AND {CAPTURED}
ON CONFLICT DO NOTHING
"""

# Refunds, matched by Stripe's refund id (Penny keeps it on its refund row).
REFUND_MISSING_IN_PENNY = """
INSERT INTO recon_found
SELECT 'refund_missing_in_penny', s.stripe_id, 'refund:' || s.stripe_id, p.id, coalesce(p.order_id, s.order_id),
       s.stripe_id,
       format('Stripe refund %s (%s %s, %s) of %s is not in Penny', s.stripe_id, s.amount, upper(s.currency),
              s.status, coalesce(s.payment_intent, s.charge)),
       jsonb_build_object('refund', s.stripe_id, 'amount', s.amount, 'currency', upper(s.currency),
                          'status', s.status, 'payment_intent', s.payment_intent, 'charge', s.charge),
       CASE WHEN p.id IS NULL THEN '{}'::jsonb ELSE jsonb_build_object(
           'payment_id', p.id, 'status', p.status, 'amount_refunded', p.amount_refunded) END
  FROM recon_stripe s
  LEFT JOIN payments p ON p.stripe_payment_intent_id = s.payment_intent
 WHERE s.object_type = 'refund' AND s.status IN ('succeeded', 'pending', 'requires_action')
   AND s.created_at >= :ws AND s.created_at < :we
   AND NOT EXISTS (SELECT 1 FROM refunds r WHERE r.stripe_refund_id = s.stripe_id)
"""

# A Penny refund Stripe does not have (its Stripe id unknown there), or that Stripe failed.
REFUND_MISSING_AT_STRIPE = """
INSERT INTO recon_found
SELECT 'refund_missing_at_stripe', r.id, 'refund:' || coalesce(r.stripe_refund_id, r.id), r.payment_id, p.order_id,
       r.stripe_refund_id,
       CASE WHEN s.stripe_id IS NULL
            THEN format('Penny refund %s (%s %s, %s) has no Stripe refund %s', r.id, r.amount, r.currency, r.status,
                        coalesce(r.stripe_refund_id, '(none)'))
            ELSE format('Penny refund %s is %s; Stripe refund %s is %s', r.id, r.status, s.stripe_id, s.status) END,
       CASE WHEN s.stripe_id IS NULL THEN '{}'::jsonb ELSE jsonb_build_object(
           'refund', s.stripe_id, 'amount', s.amount, 'status', s.status) END,
       jsonb_build_object('refund_id', r.id, 'amount', r.amount, 'currency', r.currency, 'status', r.status,
                          'stripe_refund_id', r.stripe_refund_id, 'payment_id', r.payment_id)
  FROM refunds r
  JOIN payments p ON p.id = r.payment_id
  LEFT JOIN recon_stripe s ON s.object_type = 'refund' AND s.stripe_id = r.stripe_refund_id
 WHERE r.created_at >= :ws AND r.created_at < :we
   AND r.stripe_refund_id IS NOT NULL AND r.status IN ('succeeded', 'pending')
   AND (s.stripe_id IS NULL OR (r.status = 'succeeded' AND s.status IN ('failed', 'canceled')))
"""

REFUND_AMOUNT_MISMATCH = """
INSERT INTO recon_found
SELECT 'refund_amount_mismatch', r.id, 'refund:' || r.stripe_refund_id, r.payment_id, p.order_id, s.stripe_id,
       format('Stripe refund %s is %s %s; Penny refund %s is %s %s', s.stripe_id, s.amount, upper(s.currency),
              r.id, r.amount, r.currency),
       jsonb_build_object('refund', s.stripe_id, 'amount', s.amount, 'currency', upper(s.currency)),
       jsonb_build_object('refund_id', r.id, 'amount', r.amount, 'currency', r.currency)
  FROM refunds r
  JOIN payments p ON p.id = r.payment_id
  JOIN recon_stripe s ON s.object_type = 'refund' AND s.stripe_id = r.stripe_refund_id
 WHERE ((r.created_at >= :ws AND r.created_at < :we) OR (s.created_at >= :ws AND s.created_at < :we))
   AND (abs(s.amount - r.amount) > :amount_tolerance OR upper(s.currency) <> r.currency)
"""

REFUND_SUBJECTS = """
INSERT INTO recon_subjects
SELECT 'refund:' || s.stripe_id FROM recon_stripe s
 WHERE s.object_type = 'refund' AND s.status IN ('succeeded', 'pending', 'requires_action')
   AND s.created_at >= :ws AND s.created_at < :we
UNION
SELECT 'refund:' || r.stripe_refund_id FROM refunds r
 WHERE r.created_at >= :ws AND r.created_at < :we AND r.stripe_refund_id IS NOT NULL
   AND r.status IN ('succeeded', 'pending')
ON CONFLICT DO NOTHING
"""

# Per payment and recipient: what Stripe moved (transfers less reversals; for a destination
# charge, less the application fee that came back) against what Penny booked (transfer entries
# less reversal entries).
TRANSFER_GROUPS = [
    """
    CREATE TEMPORARY TABLE recon_stripe_transfers ON COMMIT DROP AS
    SELECT coalesce(pm.id, pc.id, pg.id, 'unknown:' || t.stripe_id) AS payment_key,
           coalesce(pm.id, pc.id, pg.id) AS payment_id, t.destination AS account_id,
           sum(t.amount - coalesce(t.amount_reversed, 0)
               - CASE WHEN c.transfer = t.stripe_id THEN coalesce(c.application_fee_amount, 0) ELSE 0 END) AS net,
           min(upper(t.currency)) AS currency,
           bool_or(t.created_at >= :ws AND t.created_at < :we) AS in_window,
           jsonb_agg(jsonb_build_object('transfer', t.stripe_id, 'amount', t.amount,
                                        'amount_reversed', coalesce(t.amount_reversed, 0),
                                        'application_fee_amount',
                                        CASE WHEN c.transfer = t.stripe_id THEN c.application_fee_amount END)
                     ORDER BY t.stripe_id) AS transfers,
           string_agg(t.stripe_id, ',' ORDER BY t.stripe_id) AS transfer_ids
      FROM recon_stripe t
      LEFT JOIN payments pm ON pm.id = t.payment_id
      LEFT JOIN payments pc ON pc.stripe_charge_id = t.charge AND t.charge IS NOT NULL
      LEFT JOIN payments pg ON pg.order_id = t.transfer_group AND t.transfer_group IS NOT NULL
      LEFT JOIN recon_stripe c ON c.object_type = 'charge' AND c.stripe_id = t.charge
     WHERE t.object_type = 'transfer'
     GROUP BY 1, 2, 3
    """,
    """
    CREATE TEMPORARY TABLE recon_penny_transfers ON COMMIT DROP AS
    SELECT e.metadata ->> 'payment_id' AS payment_id, e.metadata ->> 'account_id' AS account_id,
           sum(CASE WHEN e.metadata ? 'transfer_id' THEN x.amount ELSE -x.amount END) AS net,
           min(x.currency) AS currency,
           jsonb_agg(jsonb_build_object('entry', e.idempotency_key, 'amount', x.amount) ORDER BY e.id) AS entries
      FROM ledger.entries e
      JOIN LATERAL (SELECT sum(po.amount) AS amount, min(po.currency) AS currency
                      FROM ledger.postings po WHERE po.entry_id = e.id AND po.amount > 0) x ON true
     WHERE e.metadata ? 'payment_id' AND e.metadata ? 'account_id'
       AND (e.metadata ? 'transfer_id' OR e.metadata ? 'reversal_id')
       AND e.metadata ->> 'payment_id' IN (
           SELECT id FROM payments WHERE created_at >= :ws AND created_at < :we
           UNION SELECT payment_id FROM recon_stripe_transfers WHERE payment_id IS NOT NULL)
     GROUP BY 1, 2
    """,
    """
    CREATE TEMPORARY TABLE recon_transfer_groups ON COMMIT DROP AS
    SELECT coalesce(s.payment_key, pt.payment_id) AS payment_key, coalesce(s.payment_id, pt.payment_id) AS payment_id,
           coalesce(s.account_id, pt.account_id) AS account_id,
           s.net AS stripe_net, pt.net AS penny_net, s.transfers, pt.entries, s.transfer_ids,
           coalesce(s.currency, pt.currency) AS currency
      FROM recon_stripe_transfers s
      FULL OUTER JOIN recon_penny_transfers pt ON pt.payment_id = s.payment_id AND pt.account_id = s.account_id
     WHERE coalesce(s.in_window, false)
        OR coalesce(s.payment_id, pt.payment_id) IN (
               SELECT id FROM payments WHERE created_at >= :ws AND created_at < :we)
    """,
]

TRANSFER_CLASSES = """
INSERT INTO recon_found
SELECT CASE WHEN g.stripe_net IS NULL THEN 'transfer_missing_at_stripe'
            WHEN g.penny_net IS NULL THEN 'transfer_missing_in_penny'
            ELSE 'transfer_amount_mismatch' END,
       g.payment_key || ':' || g.account_id, 'transfer:' || g.payment_key || ':' || g.account_id,
       g.payment_id, p.order_id, g.transfer_ids,
       CASE WHEN g.stripe_net IS NULL
            THEN format('Penny booked %s %s to %s for %s; Stripe has no transfer for it',
                        g.penny_net, g.currency, g.account_id, g.payment_key)
            WHEN g.penny_net IS NULL
            THEN format('Stripe moved %s %s to %s (%s); Penny booked no transfer for it',
                        g.stripe_net, g.currency, g.account_id, g.transfer_ids)
            ELSE format('Stripe moved %s %s to %s for %s (%s); Penny booked %s',
                        g.stripe_net, g.currency, g.account_id, g.payment_key, g.transfer_ids, g.penny_net) END,
       jsonb_build_object('account', g.account_id, 'net', g.stripe_net, 'transfers', coalesce(g.transfers, '[]')),
       jsonb_build_object('payment_id', g.payment_id, 'account', g.account_id, 'net', g.penny_net,
                          'entries', coalesce(g.entries, '[]'))
  FROM recon_transfer_groups g
  LEFT JOIN payments p ON p.id = g.payment_id
 WHERE g.stripe_net IS NULL OR g.penny_net IS NULL OR abs(g.stripe_net - g.penny_net) > :amount_tolerance
"""

TRANSFER_SUBJECTS = """
INSERT INTO recon_subjects
SELECT 'transfer:' || payment_key || ':' || account_id FROM recon_transfer_groups
ON CONFLICT DO NOTHING
"""

# A dispute (not an inquiry) whose stage Penny has not booked: opened, and won/lost once closed.
DISPUTE_NOT_BOOKED = """
INSERT INTO recon_found
SELECT 'dispute_not_booked', d.stripe_id, 'dispute:' || d.stripe_id, p.id, p.order_id, d.stripe_id,
       format('Stripe dispute %s (%s %s, %s) on %s is not booked in Penny''s ledger (%s)', d.stripe_id, d.amount,
              upper(d.currency), d.status, coalesce(d.charge, d.payment_intent),
              CASE WHEN NOT b.opened THEN 'opening' ELSE 'closing' END),
       jsonb_build_object('dispute', d.stripe_id, 'amount', d.amount, 'currency', upper(d.currency),
                          'status', d.status, 'charge', d.charge, 'payment_intent', d.payment_intent),
       CASE WHEN p.id IS NULL THEN '{}'::jsonb ELSE jsonb_build_object(
           'payment_id', p.id, 'status', p.status, 'dispute_status', p.dispute_status,
           'opened_booked', b.opened, 'closed_booked', b.closed) END
  FROM recon_stripe d
  LEFT JOIN LATERAL (
      SELECT * FROM payments p
       WHERE p.stripe_payment_intent_id = d.payment_intent
          OR (d.charge IS NOT NULL AND p.stripe_charge_id = d.charge)
       LIMIT 1
  ) p ON true
  CROSS JOIN LATERAL (
      SELECT EXISTS (SELECT 1 FROM ledger.entries e
                      WHERE e.idempotency_key = format('payment:%s:dispute:%s:opened', p.id, d.stripe_id))
                 AS opened,
             EXISTS (SELECT 1 FROM ledger.entries e
                      WHERE e.idempotency_key = format('payment:%s:dispute:%s:%s', p.id, d.stripe_id, d.status))
                 AS closed
  ) b
 WHERE d.object_type = 'dispute' AND d.status NOT LIKE 'warning%'
   AND d.created_at >= :ws AND d.created_at < :we
   AND (p.id IS NULL OR NOT b.opened OR (d.status IN ('won', 'lost') AND NOT b.closed))
"""

DISPUTE_SUBJECTS = """
INSERT INTO recon_subjects
SELECT 'dispute:' || stripe_id FROM recon_stripe
 WHERE object_type = 'dispute' AND status NOT LIKE 'warning%' AND created_at >= :ws AND created_at < :we
ON CONFLICT DO NOTHING
"""

# Stripe made the charge's funds available more than the threshold ago and Penny has not marked
# the payment SETTLED, or marked it more than the threshold after they were available.
SETTLEMENT_LATE = """
INSERT INTO recon_found
SELECT 'settlement_late', p.stripe_payment_intent_id, 'pi:' || p.stripe_payment_intent_id, p.id, p.order_id, b.source,
       CASE WHEN settled.at IS NULL
            THEN format('Stripe made %s available at %s; Penny''s payment %s is still %s',
                        b.source, b.available_on, p.id, p.status)
            ELSE format('Stripe made %s available at %s; Penny marked payment %s SETTLED at %s',
                        b.source, b.available_on, p.id, settled.at) END,
       jsonb_build_object('charge', b.source, 'balance_transaction', b.stripe_id, 'available_on', b.available_on),
       jsonb_build_object('payment_id', p.id, 'status', p.status, 'settled_at', settled.at,
                          'threshold_seconds', CAST(:threshold_seconds AS bigint))
  FROM recon_stripe b
  JOIN payments p ON p.stripe_charge_id = b.source
  CROSS JOIN LATERAL (SELECT min(created_at) AS at FROM payment_events
                       WHERE payment_id = p.id AND to_status = 'SETTLED') settled
 WHERE b.object_type = 'balance_transaction' AND b.transaction_type = 'charge'
   AND b.created_at >= :ws AND b.created_at < :we AND b.available_on IS NOT NULL
   AND ((settled.at IS NULL AND p.status = 'CAPTURED'
         AND b.available_on + make_interval(secs => :settlement_late_seconds) < :as_of)
        OR settled.at > b.available_on + make_interval(secs => :settlement_late_seconds))
"""

# A payout's amount against the sum of its balance transactions (Stripe's `payout` filter; the
# payout's own transaction excluded). Manual payouts have no member list and are not checked.
PAYOUT_CHECKED = """
CREATE TEMPORARY TABLE recon_payouts ON COMMIT DROP AS
SELECT o.stripe_id, o.amount, upper(o.currency) AS currency, o.status,
       coalesce(sum(m.net), 0) AS members_net, count(m.stripe_id) AS members
  FROM recon_stripe o
  JOIN recon_stripe m ON m.object_type = 'payout_member' AND m.payout = o.stripe_id
                     AND m.transaction_type IS DISTINCT FROM 'payout'
 WHERE o.object_type = 'payout' AND o.status NOT IN ('failed', 'canceled')
   AND o.created_at >= :ws AND o.created_at < :we
 GROUP BY o.stripe_id, o.amount, o.currency, o.status
"""

PAYOUT_MISMATCH = """
INSERT INTO recon_found
SELECT 'payout_mismatch', stripe_id, 'payout:' || stripe_id, NULL, NULL, stripe_id,
       format('Payout %s is %s %s; its %s balance transactions sum to %s', stripe_id, amount, currency,
              members, members_net),
       jsonb_build_object('payout', stripe_id, 'amount', amount, 'currency', currency, 'status', status,
                          'balance_transactions', members, 'balance_transactions_net', members_net),
       '{}'::jsonb
  FROM recon_payouts
 WHERE abs(amount - members_net) > :amount_tolerance
"""

PAYOUT_SUBJECTS = "INSERT INTO recon_subjects SELECT 'payout:' || stripe_id FROM recon_payouts ON CONFLICT DO NOTHING"

CLASS_STATEMENTS = [
    DUPLICATE_CHARGE,
    PENNY_MISSING,
    STRIPE_FAILED_OR_MISSING,
    PAIRS,
    AMOUNT_MISMATCH,
    CURRENCY_MISMATCH,
    FEE_MISMATCH,
    PI_SUBJECTS,
    REFUND_MISSING_IN_PENNY,
    REFUND_MISSING_AT_STRIPE,
    REFUND_AMOUNT_MISMATCH,
    REFUND_SUBJECTS,
    *TRANSFER_GROUPS,
    TRANSFER_CLASSES,
    TRANSFER_SUBJECTS,
    DISPUTE_NOT_BOOKED,
    DISPUTE_SUBJECTS,
    SETTLEMENT_LATE,
    PAYOUT_CHECKED,
    PAYOUT_MISMATCH,
    PAYOUT_SUBJECTS,
]

# Upsert the items (one per window, class and key: a re-run updates, never duplicates) and
# record which this run found.
UPSERT_ITEMS = """
WITH upserted AS (
    INSERT INTO reconciliation_items (window_start, window_end, class, item_key, payment_id, order_id, stripe_id,
                                      reason, stripe_values, penny_values, first_run_id, last_run_id)
    SELECT :ws, :we, class, item_key, payment_id, order_id, stripe_id, left(reason, 1000), stripe_values,
           penny_values, :run_id, :run_id
      FROM recon_found
    ON CONFLICT (window_start, window_end, class, item_key) DO UPDATE SET
        last_run_id = EXCLUDED.last_run_id, reason = EXCLUDED.reason, stripe_values = EXCLUDED.stripe_values,
        penny_values = EXCLUDED.penny_values, payment_id = EXCLUDED.payment_id, order_id = EXCLUDED.order_id,
        stripe_id = EXCLUDED.stripe_id, updated_at = now()
    RETURNING id
)
INSERT INTO reconciliation_run_items (run_id, item_id) SELECT :run_id, id FROM upserted ON CONFLICT DO NOTHING
"""

COUNT_CLASSES = "SELECT class, count(*) AS found FROM recon_found GROUP BY class"
COUNT_MATCHED = """
SELECT count(*) FROM recon_subjects s
 WHERE NOT EXISTS (SELECT 1 FROM recon_found f WHERE f.subject = s.subject)
"""
