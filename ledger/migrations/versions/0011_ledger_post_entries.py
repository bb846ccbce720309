"""Ledger: post several entries, and open their accounts, in one statement.

Revision ID: 0011_ledger_post_entries
Revises: 0010_reconciliation
Create Date: 2026-11-22

`ledger.post_entries` is `ledger.post_entry` for a batch (one entry is a batch of one), with
the accounts to open first in the same call. It exists for speed (#16, bench/ledger.py):

- one round trip where a payment step used two (open the accounts, then post) and a batch of
  entries used one per entry;
- the postings of every entry in the batch go in with one INSERT, so the balance trigger runs
  once per batch and updates each account's balance row once, in ascending account id order;
- the client binds it as a prepared statement on the asyncpg connection (ledger/ledger.py).

Nothing about the guarantees changes: the postings trigger, the deferred per-entry balance
check, the append-only triggers and the limits are the same ones, and idempotency works as in
`post_entry` (same key and fingerprint: the existing entry, `created = false`; another
fingerprint: LG003). `ledger.post_entry` stays for callers of the earlier revision.

It also replaces the postings trigger's function (`ledger.apply_postings`) with one that looks
up the statement's entries and accounts by primary key. The earlier one joined the transition
table to `ledger.entries` and `ledger.accounts`, and with no statistics on a transition table
the planner could choose hash joins over whole-table scans, so its cost grew with the size of
the ledger (bench/ledger.py --profile, concurrency 8: 0.3 ms per posting statement in a fresh
ledger, 6.3 ms once the benchmark's earlier runs had filled it; this version: 0.06 ms). It
also does `ledger.apply_delta`'s update inline instead of calling it per account
(release_pending still calls it). The checks and the balance updates are the same, in the same
account order.
"""

from alembic import op

revision = "0011_ledger_post_entries"
down_revision = "0010_reconciliation"
branch_labels = None
depends_on = None

POST_ENTRIES = """
CREATE FUNCTION ledger.post_entries(
    p_keys text[], p_fingerprints text[], p_kinds text[], p_descriptions text[], p_metadata jsonb[],
    p_effective_at timestamptz[], p_reverses bigint[],
    p_entry_of integer[], p_lines smallint[], p_codes text[], p_amounts bigint[], p_currencies text[],
    p_open_codes text[], p_open_types text[], p_open_currencies text[], p_open_limits boolean[],
    p_open_metadata jsonb[]
) RETURNS TABLE (ord integer, entry_id bigint, created boolean) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_bad record;
    v_account_ids bigint[];
    v_found integer;
    v_currencies_match boolean;
    v_ids bigint[];
    v_created boolean[];
    v_existing record;
    v_count integer := cardinality(p_keys);
BEGIN
    IF v_count > 1 AND (SELECT count(DISTINCT key) FROM unnest(p_keys) AS k(key)) <> v_count THEN
        RAISE EXCEPTION USING ERRCODE = 'LG008', MESSAGE = 'an idempotency key appears twice in one batch';
    END IF;

    -- 1. Open the accounts the caller asked for (sorted, so concurrent openers never deadlock).
    IF cardinality(p_open_codes) > 0 THEN
        INSERT INTO ledger.accounts (code, type, currency, must_not_go_negative, metadata)
        SELECT code, type, currency, must_not_go_negative, metadata
          FROM unnest(p_open_codes, p_open_types, p_open_currencies, p_open_limits, p_open_metadata)
               AS t(code, type, currency, must_not_go_negative, metadata)
         ORDER BY code
        ON CONFLICT (code) DO NOTHING;
        SELECT t.code, a.type, a.currency, a.must_not_go_negative INTO v_bad
          FROM unnest(p_open_codes, p_open_types, p_open_currencies, p_open_limits)
               AS t(code, type, currency, must_not_go_negative)
          JOIN ledger.accounts a ON a.code = t.code
         WHERE (a.type, a.currency, a.must_not_go_negative)
               IS DISTINCT FROM (t.type, t.currency, t.must_not_go_negative)
         LIMIT 1;
        IF FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'LG012', DETAIL = v_bad.code,
                MESSAGE = format('account %s exists as %s in %s (must_not_go_negative=%s),'
                                 ' which differs from the one requested',
                                 v_bad.code, v_bad.type, v_bad.currency, v_bad.must_not_go_negative);
        END IF;
    END IF;

    -- 2. Every posting's account exists and holds the posting's currency.
    SELECT array_agg(a.id ORDER BY t.n), count(a.id), coalesce(bool_and(a.currency = t.currency), true)
      INTO v_account_ids, v_found, v_currencies_match
      FROM unnest(p_codes, p_currencies) WITH ORDINALITY AS t(code, currency, n)
      LEFT JOIN ledger.accounts a ON a.code = t.code;
    IF v_found < cardinality(p_codes) OR NOT v_currencies_match THEN
        SELECT t.code, t.currency, a.id AS account_id, a.currency AS account_currency INTO v_bad
          FROM unnest(p_codes, p_currencies) AS t(code, currency)
          LEFT JOIN ledger.accounts a ON a.code = t.code
         WHERE a.id IS NULL OR a.currency <> t.currency
         LIMIT 1;
        IF v_bad.account_id IS NULL THEN
            RAISE EXCEPTION USING ERRCODE = 'LG001', DETAIL = v_bad.code,
                MESSAGE = format('account %s does not exist', v_bad.code);
        END IF;
        RAISE EXCEPTION USING ERRCODE = 'LG002', DETAIL = v_bad.code,
            MESSAGE = format('posting in %s to account %s, which holds %s', v_bad.currency, v_bad.code,
                             v_bad.account_currency);
    END IF;

    -- 3. A reversal points at a posted entry that reverses nothing.
    SELECT r.id INTO v_bad
      FROM unnest(p_reverses) AS r(id)
     WHERE r.id IS NOT NULL
       AND NOT EXISTS (SELECT 1 FROM ledger.entries e
                        WHERE e.id = r.id AND e.kind = 'posted' AND e.reverses_entry_id IS NULL)
     LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LG011',
            MESSAGE = format('entry %s is not a posted, non-reversal entry', v_bad.id);
    END IF;

    -- 4. The entries; a used key (or an entry already reversed) inserts nothing.
    WITH input AS (
        SELECT * FROM unnest(p_keys, p_fingerprints, p_kinds, p_descriptions, p_metadata, p_effective_at, p_reverses)
               WITH ORDINALITY AS t(key, fingerprint, kind, description, metadata, effective_at, reverses, n)
    ), inserted AS (
        INSERT INTO ledger.entries (idempotency_key, fingerprint, kind, description, metadata, effective_at,
                                    reverses_entry_id)
        SELECT key, fingerprint, kind, description, metadata, coalesce(effective_at, now()), reverses
          FROM input ORDER BY n
        ON CONFLICT DO NOTHING
        RETURNING id, idempotency_key
    )
    SELECT array_agg(i.id ORDER BY input.n), array_agg(i.id IS NOT NULL ORDER BY input.n)
      INTO v_ids, v_created
      FROM input LEFT JOIN inserted i ON i.idempotency_key = input.key;

    -- 5. Keys used before: the same request is a replay, another is a conflict.
    IF NOT (true = ALL (v_created)) THEN
        FOR v_existing IN
            SELECT t.n, t.key, t.fingerprint, t.reverses, e.id, e.fingerprint AS existing_fingerprint
              FROM unnest(p_keys, p_fingerprints, p_reverses, v_created)
                   WITH ORDINALITY AS t(key, fingerprint, reverses, created, n)
              LEFT JOIN ledger.entries e ON e.idempotency_key = t.key
             WHERE NOT t.created
        LOOP
            IF v_existing.id IS NULL THEN
                RAISE EXCEPTION USING ERRCODE = 'LG011',
                    MESSAGE = format('entry %s was already reversed', v_existing.reverses);
            ELSIF v_existing.existing_fingerprint <> v_existing.fingerprint THEN
                RAISE EXCEPTION USING ERRCODE = 'LG003', DETAIL = v_existing.key,
                    MESSAGE = format('idempotency key %s was used for entry %s with different postings',
                                     v_existing.key, v_existing.id);
            END IF;
            v_ids[v_existing.n] := v_existing.id;
        END LOOP;
    END IF;

    -- 6. Every new entry's postings in one statement: the balance trigger runs once.
    INSERT INTO ledger.postings (entry_id, line, account_id, currency, amount)
    SELECT v_ids[t.entry_of], t.line, t.account_id, t.currency, t.amount
      FROM unnest(p_entry_of, p_lines, v_account_ids, p_amounts, p_currencies)
           AS t(entry_of, line, account_id, amount, currency)
     WHERE v_created[t.entry_of];

    RETURN QUERY SELECT n, v_ids[n], v_created[n] FROM generate_series(1, v_count) AS n;
END $$;
"""


# Same checks and updates as 0002's, but the entries and accounts of the statement are read by
# primary key (OFFSET 0 keeps each lookup a correlated index probe the planner cannot turn
# into a join over the whole table).
APPLY_POSTINGS = """
CREATE OR REPLACE FUNCTION ledger.apply_postings() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
    b ledger.account_balances;
BEGIN
    FOR r IN
        WITH entries AS MATERIALIZED (
            SELECT x.entry_id, e.id, e.kind, e.created_xid
              FROM (SELECT DISTINCT entry_id FROM new_postings) AS x
              LEFT JOIN LATERAL (SELECT id, kind, created_xid FROM ledger.entries
                                  WHERE id = x.entry_id OFFSET 0) AS e ON true
        ), accounts AS MATERIALIZED (
            SELECT x.account_id, a.id, a.currency
              FROM (SELECT DISTINCT account_id FROM new_postings) AS x
              LEFT JOIN LATERAL (SELECT id, currency FROM ledger.accounts
                                  WHERE id = x.account_id OFFSET 0) AS a ON true
        )
        SELECT n.account_id,
               sum(n.amount) FILTER (WHERE e.kind = 'posted' AND n.amount > 0) AS debits_posted,
               -sum(n.amount) FILTER (WHERE e.kind = 'posted' AND n.amount < 0) AS credits_posted,
               sum(n.amount) FILTER (WHERE e.kind = 'pending' AND n.amount > 0) AS debits_pending,
               -sum(n.amount) FILTER (WHERE e.kind = 'pending' AND n.amount < 0) AS credits_pending,
               bool_or(e.kind = 'void') AS on_void,
               bool_or(e.created_xid <> pg_current_xact_id()) AS foreign_entry,
               bool_or(e.id IS NULL) AS missing_entry,
               bool_or(a.id IS NULL) AS missing_account,
               bool_or(a.currency <> n.currency) AS wrong_currency
          FROM new_postings n
          JOIN entries e ON e.entry_id = n.entry_id
          JOIN accounts a ON a.account_id = n.account_id
         GROUP BY n.account_id
         ORDER BY n.account_id
    LOOP
        IF r.missing_entry THEN
            RAISE EXCEPTION USING ERRCODE = 'LG010', MESSAGE = 'a posting refers to an entry that does not exist';
        END IF;
        IF r.missing_account THEN
            RAISE EXCEPTION USING ERRCODE = 'LG001', MESSAGE = format('account id %s does not exist', r.account_id);
        END IF;
        IF r.wrong_currency THEN
            RAISE EXCEPTION USING ERRCODE = 'LG002',
                MESSAGE = format('a posting to account id %s is not in the account''s currency', r.account_id);
        END IF;
        IF r.on_void THEN
            RAISE EXCEPTION USING ERRCODE = 'LG008', MESSAGE = 'a void entry has no postings';
        END IF;
        IF r.foreign_entry THEN
            RAISE EXCEPTION USING ERRCODE = 'LG009',
                MESSAGE = 'postings can only be added by the transaction that created their entry';
        END IF;
        -- ledger.apply_delta, inlined (a function call per account was a fifth of its cost):
        -- the first slot row no one holds, from this connection's own; else wait for its own.
        UPDATE ledger.account_balances
           SET debits_posted = debits_posted + coalesce(r.debits_posted, 0),
               credits_posted = credits_posted + coalesce(r.credits_posted, 0),
               debits_pending = debits_pending + coalesce(r.debits_pending, 0),
               credits_pending = credits_pending + coalesce(r.credits_pending, 0),
               version = version + 1
         WHERE account_id = r.account_id
           AND slot = (SELECT slot FROM ledger.account_balances
                        WHERE account_id = r.account_id
                        ORDER BY (slot + 16 - pg_backend_pid() % 16) % 16
                        LIMIT 1
                        FOR UPDATE SKIP LOCKED)
        RETURNING * INTO b;
        IF NOT FOUND THEN
            UPDATE ledger.account_balances
               SET debits_posted = debits_posted + coalesce(r.debits_posted, 0),
                   credits_posted = credits_posted + coalesce(r.credits_posted, 0),
                   debits_pending = debits_pending + coalesce(r.debits_pending, 0),
                   credits_pending = credits_pending + coalesce(r.credits_pending, 0),
                   version = version + 1
             WHERE account_id = r.account_id AND (slot = pg_backend_pid() % 16 OR must_not_go_negative)
            RETURNING * INTO b;
        END IF;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'LG001',
                MESSAGE = format('account id %s has no balance row', r.account_id);
        END IF;
        IF b.must_not_go_negative AND (
            (b.normal_balance = 1 AND b.credits_posted + b.credits_pending > b.debits_posted) OR
            (b.normal_balance = -1 AND b.debits_posted + b.debits_pending > b.credits_posted)
        ) THEN
            RAISE EXCEPTION USING ERRCODE = 'LG004',
                MESSAGE = format('account %s must not go negative: balance would be %s',
                    (SELECT code FROM ledger.accounts WHERE id = r.account_id),
                    CASE WHEN b.normal_balance = 1 THEN b.debits_posted - b.credits_posted - b.credits_pending
                         ELSE b.credits_posted - b.debits_posted - b.debits_pending END),
                DETAIL = (SELECT code FROM ledger.accounts WHERE id = r.account_id);
        END IF;
    END LOOP;
    RETURN NULL;
END $$;
"""


def upgrade() -> None:
    op.execute(POST_ENTRIES)
    op.execute(APPLY_POSTINGS)


def downgrade() -> None:
    # apply_postings keeps this revision's body: it does what 0002's did, only faster.
    op.execute(
        "DROP FUNCTION ledger.post_entries(text[], text[], text[], text[], jsonb[], timestamptz[], bigint[],"
        " integer[], smallint[], text[], bigint[], text[], text[], text[], text[], boolean[], jsonb[])"
    )
