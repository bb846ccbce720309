"""Ledger: accounts, entries, postings, balances.

Revision ID: 0002_ledger
Revises: 0001_foundation
Create Date: 2026-11-21

Everything lives in the `ledger` schema. What the database itself guarantees, whoever writes:

- Every entry balances per currency and has at least two postings (void entries: none; a
  pending entry: exactly two, one debit and one credit) — a DEFERRABLE INITIALLY DEFERRED
  constraint trigger checks each entry at commit, so the postings may arrive in several
  statements. Postings can only be added by the transaction that created their entry
  (checked on insert), so that commit-time check sees every posting an entry will ever have.
- Accounts, entries and postings are append-only: UPDATE, DELETE and TRUNCATE are refused
  by triggers. Two-phase status changes are *new rows*: a pending entry is resolved by a
  later entry whose `resolves_entry_id` points at it (kind 'posted' = final, 'void' =
  voided); `resolves_entry_id` is UNIQUE, so an entry is resolved at most once even under
  concurrency. Likewise `reverses_entry_id` is UNIQUE: an entry is reversed at most once.
- A posting's entry and account exist and its currency is its account's (checked by the
  postings statement trigger).
- account_balances (debits/credits, posted/pending, version) is maintained by a statement
  trigger on postings (and a row trigger on resolving entries), locking balance rows in
  ascending account id order — one fixed order for every writer, so concurrent entries
  cannot deadlock. Accounts without a limit spread their balance over 16 slot rows so hot
  accounts do not serialise all entries (see the table comment). The same trigger
  enforces `must_not_go_negative` right after taking the
  row lock, so the limit holds under any concurrency. Direct UPDATE/DELETE of balances is
  refused; only those triggers may change them.

`ledger.post_entry` and `ledger.resolve_pending` do a whole posting in one round trip
(idempotency, validation, insert); `ledger/ledger.py` calls them. Errors use SQLSTATE class
"LG" (see `ledger/errors.py`).
"""

from alembic import op

revision = "0002_ledger"
down_revision = "0001_foundation"
branch_labels = None
depends_on = None

TABLES = """
CREATE SCHEMA ledger;

CREATE TABLE ledger.accounts (
    id                   bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    code                 text        NOT NULL UNIQUE CHECK (length(code) BETWEEN 1 AND 200),
    type                 text        NOT NULL CHECK (type IN ('asset', 'liability', 'revenue', 'expense', 'equity')),
    currency             text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    must_not_go_negative boolean     NOT NULL DEFAULT false,
    metadata             jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    created_at           timestamptz NOT NULL DEFAULT now(),
    UNIQUE (id, currency)
);

-- The O(1) balance. An account with a limit has one row (slot 0): every entry touching it
-- locks that row, which is what makes the limit exact. An account without a limit (the
-- platform's hot accounts: stripe:pending, platform:fees, tax...) has 16 rows and each
-- connection adds to its own slot (backend pid mod 16), so concurrent entries touching
-- the same hot account do not queue behind each other's commit. A balance is the sum of
-- at most 16 rows. Slot columns may individually go negative (a hold posted on one slot can
-- be released on another); only sums are meaningful.
CREATE TABLE ledger.account_balances (
    account_id           bigint   NOT NULL REFERENCES ledger.accounts (id),
    slot                 smallint NOT NULL CHECK (slot BETWEEN 0 AND 15),
    normal_balance       smallint NOT NULL CHECK (normal_balance IN (1, -1)),
    must_not_go_negative boolean  NOT NULL CHECK (NOT must_not_go_negative OR slot = 0),
    debits_posted        bigint   NOT NULL DEFAULT 0,
    credits_posted       bigint   NOT NULL DEFAULT 0,
    debits_pending       bigint   NOT NULL DEFAULT 0,
    credits_pending      bigint   NOT NULL DEFAULT 0,
    version              bigint   NOT NULL DEFAULT 0,
    PRIMARY KEY (account_id, slot)
) WITH (fillfactor = 50);

CREATE TABLE ledger.entries (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    idempotency_key   text        NOT NULL UNIQUE CHECK (length(idempotency_key) BETWEEN 1 AND 255),
    fingerprint       text        NOT NULL,
    kind              text        NOT NULL CHECK (kind IN ('posted', 'pending', 'void')),
    description       text        NOT NULL CHECK (length(description) <= 1000),
    reverses_entry_id bigint      REFERENCES ledger.entries (id),
    resolves_entry_id bigint      REFERENCES ledger.entries (id),
    metadata          jsonb       NOT NULL DEFAULT '{}' CHECK (jsonb_typeof(metadata) = 'object'),
    effective_at      timestamptz NOT NULL DEFAULT now(),
    created_at        timestamptz NOT NULL DEFAULT now(),
    created_xid       xid8        NOT NULL DEFAULT pg_current_xact_id(),  -- set by a trigger, see below
    CHECK (kind <> 'void' OR resolves_entry_id IS NOT NULL),
    CHECK (kind <> 'pending' OR (resolves_entry_id IS NULL AND reverses_entry_id IS NULL)),
    CHECK (resolves_entry_id IS NULL OR reverses_entry_id IS NULL)
);
-- A payment's entries are looked up by metadata payment_id (a btree costs far less per
-- insert than a GIN index over all metadata; other keys are found by a bounded scan).
CREATE UNIQUE INDEX entries_reverses_once ON ledger.entries (reverses_entry_id) WHERE reverses_entry_id IS NOT NULL;
CREATE UNIQUE INDEX entries_resolves_once ON ledger.entries (resolves_entry_id) WHERE resolves_entry_id IS NOT NULL;
CREATE INDEX entries_payment_id ON ledger.entries ((metadata ->> 'payment_id'))
    WHERE metadata ? 'payment_id';

CREATE TABLE ledger.postings (
    entry_id   bigint   NOT NULL REFERENCES ledger.entries (id),
    line       smallint NOT NULL CHECK (line >= 0),
    account_id bigint   NOT NULL,
    currency   text     NOT NULL,
    amount     bigint   NOT NULL CHECK (amount <> 0 AND amount > -9223372036854775808),
    PRIMARY KEY (entry_id, line)
    -- No foreign keys: the statement trigger postings_apply checks, once per statement, that
    -- every posting's entry and account exist and that the currency is the account's. (Per-row
    -- foreign-key checks were a sixth of the posting cost; referenced rows are never deleted.)
);
CREATE INDEX postings_account ON ledger.postings (account_id, entry_id);
"""

APPEND_ONLY = """
CREATE FUNCTION ledger.refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'LG009',
        MESSAGE = format('ledger.%s is append-only: %s refused', TG_TABLE_NAME, TG_OP);
END $$;

CREATE TRIGGER accounts_append_only BEFORE UPDATE OR DELETE ON ledger.accounts
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER entries_append_only BEFORE UPDATE OR DELETE ON ledger.entries
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER postings_append_only BEFORE UPDATE OR DELETE ON ledger.postings
    FOR EACH ROW EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER accounts_no_truncate BEFORE TRUNCATE ON ledger.accounts
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER entries_no_truncate BEFORE TRUNCATE ON ledger.entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER postings_no_truncate BEFORE TRUNCATE ON ledger.postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();
CREATE TRIGGER balances_no_truncate BEFORE TRUNCATE ON ledger.account_balances
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.refuse_change();

-- Balances change only from inside the ledger's own triggers (trigger depth > 1).
CREATE FUNCTION ledger.guard_balances() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF pg_trigger_depth() <= 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'LG009',
            MESSAGE = format('ledger.account_balances is derived from postings: direct %s refused', TG_OP);
    END IF;
    RETURN CASE WHEN TG_OP = 'DELETE' THEN OLD ELSE NEW END;
END $$;
CREATE TRIGGER balances_guard BEFORE UPDATE OR DELETE ON ledger.account_balances
    FOR EACH ROW EXECUTE FUNCTION ledger.guard_balances();
"""

BALANCES = """
CREATE FUNCTION ledger.open_balance() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ledger.account_balances (account_id, slot, normal_balance, must_not_go_negative)
    SELECT NEW.id, slot, CASE WHEN NEW.type IN ('asset', 'expense') THEN 1 ELSE -1 END, NEW.must_not_go_negative
      FROM generate_series(0, CASE WHEN NEW.must_not_go_negative THEN 0 ELSE 15 END) AS slot;
    RETURN NULL;
END $$;
CREATE TRIGGER accounts_open_balance AFTER INSERT ON ledger.accounts
    FOR EACH ROW EXECUTE FUNCTION ledger.open_balance();

-- Add deltas to one balance row (locking it), then check its limit while the lock is held.
-- An account without a limit takes the first of its slot rows no one else holds, starting
-- at this connection's own; only when all are held (or for the single row of an account
-- with a limit) does it wait. Waits happen in ascending account id order only (callers
-- loop in that order), so there is no deadlock.
CREATE FUNCTION ledger.apply_delta(
    p_account_id bigint, p_debits_posted numeric, p_credits_posted numeric,
    p_debits_pending numeric, p_credits_pending numeric
) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    b ledger.account_balances;
BEGIN
    UPDATE ledger.account_balances
       SET debits_posted = debits_posted + p_debits_posted,
           credits_posted = credits_posted + p_credits_posted,
           debits_pending = debits_pending + p_debits_pending,
           credits_pending = credits_pending + p_credits_pending,
           version = version + 1
     WHERE account_id = p_account_id
       AND slot = (SELECT slot FROM ledger.account_balances
                    WHERE account_id = p_account_id
                    ORDER BY (slot + 16 - pg_backend_pid() % 16) % 16
                    LIMIT 1
                    FOR UPDATE SKIP LOCKED)
    RETURNING * INTO b;
    IF NOT FOUND THEN
        -- Every slot is held by another transaction: wait for this connection's own.
        UPDATE ledger.account_balances
           SET debits_posted = debits_posted + p_debits_posted,
               credits_posted = credits_posted + p_credits_posted,
               debits_pending = debits_pending + p_debits_pending,
               credits_pending = credits_pending + p_credits_pending,
               version = version + 1
         WHERE account_id = p_account_id AND (slot = pg_backend_pid() % 16 OR must_not_go_negative)
        RETURNING * INTO b;
    END IF;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LG001', MESSAGE = format('account id %s has no balance row', p_account_id);
    END IF;
    IF b.must_not_go_negative AND (
        (b.normal_balance = 1 AND b.credits_posted + b.credits_pending > b.debits_posted) OR
        (b.normal_balance = -1 AND b.debits_posted + b.debits_pending > b.credits_posted)
    ) THEN
        RAISE EXCEPTION USING ERRCODE = 'LG004',
            MESSAGE = format('account %s must not go negative: balance would be %s',
                (SELECT code FROM ledger.accounts WHERE id = p_account_id),
                CASE WHEN b.normal_balance = 1 THEN b.debits_posted - b.credits_posted - b.credits_pending
                     ELSE b.credits_posted - b.debits_posted - b.debits_pending END),
            DETAIL = (SELECT code FROM ledger.accounts WHERE id = p_account_id);
    END IF;
END $$;

-- Postings move posted or pending balances (by their entry's kind), one statement at a
-- time, accounts in ascending id order.
CREATE FUNCTION ledger.apply_postings() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR r IN
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
          LEFT JOIN ledger.entries e ON e.id = n.entry_id
          LEFT JOIN ledger.accounts a ON a.id = n.account_id
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
        PERFORM ledger.apply_delta(r.account_id, coalesce(r.debits_posted, 0), coalesce(r.credits_posted, 0),
                                   coalesce(r.debits_pending, 0), coalesce(r.credits_pending, 0));
    END LOOP;
    RETURN NULL;
END $$;
-- An entry's postings are written by the transaction that creates the entry, so the
-- deferred balance check of the entry (at that transaction's commit) sees all of them.
-- created_xid is the top-level transaction id (also inside savepoints), stamped by a
-- trigger so no writer can choose it.
CREATE FUNCTION ledger.stamp_entry() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.created_xid := pg_current_xact_id();
    RETURN NEW;
END $$;
CREATE TRIGGER entries_stamp BEFORE INSERT ON ledger.entries
    FOR EACH ROW EXECUTE FUNCTION ledger.stamp_entry();

CREATE TRIGGER postings_apply AFTER INSERT ON ledger.postings
    REFERENCING NEW TABLE AS new_postings
    FOR EACH STATEMENT EXECUTE FUNCTION ledger.apply_postings();

-- Resolving (posting or voiding) a pending entry releases everything it held.
CREATE FUNCTION ledger.release_pending() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    IF (SELECT kind FROM ledger.entries WHERE id = NEW.resolves_entry_id) IS DISTINCT FROM 'pending' THEN
        RAISE EXCEPTION USING ERRCODE = 'LG005',
            MESSAGE = format('entry %s is not a pending entry', NEW.resolves_entry_id);
    END IF;
    FOR r IN
        SELECT account_id,
               coalesce(sum(amount) FILTER (WHERE amount > 0), 0) AS debits,
               coalesce(-sum(amount) FILTER (WHERE amount < 0), 0) AS credits
          FROM ledger.postings WHERE entry_id = NEW.resolves_entry_id
         GROUP BY account_id ORDER BY account_id
    LOOP
        PERFORM ledger.apply_delta(r.account_id, 0, 0, -r.debits, -r.credits);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER entries_release_pending AFTER INSERT ON ledger.entries
    FOR EACH ROW WHEN (NEW.resolves_entry_id IS NOT NULL) EXECUTE FUNCTION ledger.release_pending();
"""

BALANCED = """
-- The shape of one entry, checked at commit (once per entry: postings can only be added by
-- the transaction creating the entry, so its commit sees all of them).
CREATE FUNCTION ledger.check_entry() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    postings_count integer;
    debits_count integer;
    balanced boolean;
    target_kind text;
BEGIN
    SELECT coalesce(sum(lines), 0), coalesce(sum(debits), 0), coalesce(bool_and(total = 0), true)
      INTO postings_count, debits_count, balanced
      FROM (SELECT count(*) AS lines, count(*) FILTER (WHERE amount > 0) AS debits, sum(amount) AS total
              FROM ledger.postings WHERE entry_id = NEW.id GROUP BY currency) AS per_currency;
    IF NEW.kind = 'void' THEN
        IF postings_count > 0 THEN
            RAISE EXCEPTION USING ERRCODE = 'LG008', MESSAGE = format('void entry %s has postings', NEW.id);
        END IF;
        RETURN NULL;
    END IF;
    IF postings_count < 2 THEN
        RAISE EXCEPTION USING ERRCODE = 'LG008',
            MESSAGE = format('entry %s has %s posting(s); at least two are required', NEW.id, postings_count);
    END IF;
    IF NOT balanced THEN
        RAISE EXCEPTION USING ERRCODE = 'LG007',
            MESSAGE = format('entry %s does not balance: debits and credits differ in some currency', NEW.id);
    END IF;
    IF NEW.kind = 'pending' AND (postings_count <> 2 OR debits_count <> 1) THEN
        RAISE EXCEPTION USING ERRCODE = 'LG008',
            MESSAGE = format('pending entry %s must have exactly two postings, one debit and one credit', NEW.id);
    END IF;
    IF NEW.resolves_entry_id IS NOT NULL AND (postings_count <> 2 OR EXISTS (
        SELECT 1 FROM ledger.postings f
         WHERE f.entry_id = NEW.id
           AND NOT EXISTS (SELECT 1 FROM ledger.postings p
                            WHERE p.entry_id = NEW.resolves_entry_id AND p.account_id = f.account_id
                              AND sign(p.amount) = sign(f.amount) AND abs(f.amount) <= abs(p.amount))))
    THEN
        RAISE EXCEPTION USING ERRCODE = 'LG006',
            MESSAGE = format('entry %s does not post within pending entry %s', NEW.id, NEW.resolves_entry_id);
    END IF;
    IF NEW.reverses_entry_id IS NOT NULL THEN
        SELECT kind INTO target_kind FROM ledger.entries WHERE id = NEW.reverses_entry_id;
        IF target_kind <> 'posted' OR EXISTS (
            (SELECT account_id, currency, -amount FROM ledger.postings WHERE entry_id = NEW.reverses_entry_id
             EXCEPT ALL SELECT account_id, currency, amount FROM ledger.postings WHERE entry_id = NEW.id)
            UNION ALL
            (SELECT account_id, currency, amount FROM ledger.postings WHERE entry_id = NEW.id
             EXCEPT ALL
             SELECT account_id, currency, -amount FROM ledger.postings WHERE entry_id = NEW.reverses_entry_id))
        THEN
            RAISE EXCEPTION USING ERRCODE = 'LG011',
                MESSAGE = format('entry %s is not the mirror of posted entry %s', NEW.id, NEW.reverses_entry_id);
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE CONSTRAINT TRIGGER entries_balanced AFTER INSERT ON ledger.entries
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION ledger.check_entry();
"""

FUNCTIONS = """
-- One round trip for one entry: idempotency, account and currency checks, insert.
-- Returns the entry id and whether it was created (false = replay of the same key).
CREATE FUNCTION ledger.post_entry(
    p_key text, p_fingerprint text, p_kind text, p_description text, p_metadata jsonb,
    p_effective_at timestamptz, p_reverses_entry_id bigint,
    p_codes text[], p_amounts bigint[], p_currencies text[]
) RETURNS TABLE (entry_id bigint, created boolean) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_id bigint;
    v_fingerprint text;
    v_account_ids bigint[];
    v_found integer;
    v_currencies_match boolean;
    v_bad record;
BEGIN
    SELECT array_agg(a.id ORDER BY t.ord), count(a.id), coalesce(bool_and(a.currency = t.currency), true)
      INTO v_account_ids, v_found, v_currencies_match
      FROM unnest(p_codes, p_currencies) WITH ORDINALITY AS t(code, currency, ord)
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

    IF p_reverses_entry_id IS NOT NULL THEN
        IF NOT EXISTS (SELECT 1 FROM ledger.entries
                        WHERE id = p_reverses_entry_id AND kind = 'posted' AND reverses_entry_id IS NULL) THEN
            RAISE EXCEPTION USING ERRCODE = 'LG011',
                MESSAGE = format('entry %s is not a posted, non-reversal entry', p_reverses_entry_id);
        END IF;
    END IF;

    INSERT INTO ledger.entries (idempotency_key, fingerprint, kind, description, metadata, effective_at,
                                reverses_entry_id)
    VALUES (p_key, p_fingerprint, p_kind, p_description, p_metadata, coalesce(p_effective_at, now()),
            p_reverses_entry_id)
    ON CONFLICT DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        -- The key was used before (a replay, or a conflict), or the entry was already reversed.
        SELECT id, fingerprint INTO v_id, v_fingerprint FROM ledger.entries WHERE idempotency_key = p_key;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'LG011',
                MESSAGE = format('entry %s was already reversed', p_reverses_entry_id);
        ELSIF v_fingerprint <> p_fingerprint THEN
            RAISE EXCEPTION USING ERRCODE = 'LG003', DETAIL = p_key,
                MESSAGE = format('idempotency key %s was used for entry %s with different postings', p_key, v_id);
        END IF;
        RETURN QUERY SELECT v_id, false;
        RETURN;
    END IF;

    -- Lines keep the caller's order; the balance trigger locks accounts in id order anyway.
    INSERT INTO ledger.postings (entry_id, line, account_id, currency, amount)
    SELECT v_id, (t.ord - 1)::smallint, t.account_id, t.currency, t.amount
      FROM unnest(v_account_ids, p_amounts, p_currencies) WITH ORDINALITY AS t(account_id, amount, currency, ord);
    RETURN QUERY SELECT v_id, true;
END $$;

-- Post (p_kind 'posted', p_amount NULL = everything held) or void (p_kind 'void') a pending
-- entry. The pending entry's two postings are re-posted with amount p_amount; what was held
-- is released in full either way.
CREATE FUNCTION ledger.resolve_pending(
    p_key text, p_pending_entry_id bigint, p_kind text, p_amount bigint, p_description text
) RETURNS TABLE (entry_id bigint, created boolean) LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_pending ledger.entries;
    v_held bigint;
    v_amount bigint;
    v_fingerprint text;
    v_id bigint;
    v_existing_fingerprint text;
    v_resolver bigint;
BEGIN
    SELECT * INTO v_pending FROM ledger.entries WHERE id = p_pending_entry_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LG010', MESSAGE = format('entry %s does not exist', p_pending_entry_id);
    END IF;
    SELECT max(amount) INTO v_held FROM ledger.postings WHERE ledger.postings.entry_id = p_pending_entry_id;
    v_amount := CASE WHEN p_kind = 'void' THEN 0 ELSE coalesce(p_amount, v_held) END;
    v_fingerprint := format('%s:%s:%s', p_kind, p_pending_entry_id, v_amount);

    SELECT id, fingerprint INTO v_id, v_existing_fingerprint FROM ledger.entries WHERE idempotency_key = p_key;
    IF FOUND THEN
        IF v_existing_fingerprint <> v_fingerprint THEN
            RAISE EXCEPTION USING ERRCODE = 'LG003', DETAIL = p_key,
                MESSAGE = format('idempotency key %s was used for entry %s with a different request', p_key, v_id);
        END IF;
        RETURN QUERY SELECT v_id, false;
        RETURN;
    END IF;

    IF v_pending.kind <> 'pending' THEN
        RAISE EXCEPTION USING ERRCODE = 'LG005',
            MESSAGE = format('entry %s is not a pending entry', p_pending_entry_id);
    END IF;
    SELECT id INTO v_resolver FROM ledger.entries WHERE resolves_entry_id = p_pending_entry_id;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'LG005',
            MESSAGE = format('pending entry %s was already resolved by entry %s', p_pending_entry_id, v_resolver);
    END IF;
    IF p_kind = 'posted' AND (v_amount <= 0 OR v_amount > v_held) THEN
        RAISE EXCEPTION USING ERRCODE = 'LG006',
            MESSAGE = format('amount %s must be between 1 and the %s held by entry %s', v_amount, v_held,
                             p_pending_entry_id);
    END IF;

    INSERT INTO ledger.entries (idempotency_key, fingerprint, kind, description, metadata, resolves_entry_id)
    VALUES (p_key, v_fingerprint, p_kind, p_description, v_pending.metadata, p_pending_entry_id)
    ON CONFLICT DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        SELECT id, fingerprint INTO v_id, v_existing_fingerprint FROM ledger.entries WHERE idempotency_key = p_key;
        IF NOT FOUND THEN
            RAISE EXCEPTION USING ERRCODE = 'LG005',
                MESSAGE = format('pending entry %s was already resolved', p_pending_entry_id);
        ELSIF v_existing_fingerprint <> v_fingerprint THEN
            RAISE EXCEPTION USING ERRCODE = 'LG003', DETAIL = p_key,
                MESSAGE = format('idempotency key %s was used for entry %s with a different request', p_key, v_id);
        END IF;
        RETURN QUERY SELECT v_id, false;
        RETURN;
    END IF;

    IF p_kind = 'posted' THEN
        INSERT INTO ledger.postings (entry_id, line, account_id, currency, amount)
        SELECT v_id, p.line, p.account_id, p.currency, sign(p.amount)::bigint * v_amount
          FROM ledger.postings p WHERE p.entry_id = p_pending_entry_id;
    END IF;
    RETURN QUERY SELECT v_id, true;
END $$;
"""


def _statements(block: str) -> list[str]:
    """Split a block into statements at top-level semicolons (not inside $$ function bodies),
    because the asyncpg driver prepares each statement and takes one at a time."""
    statements: list[str] = []
    current: list[str] = []
    inside_body = False
    for line in block.splitlines():
        if line.lstrip().startswith("--") and not current:
            continue
        current.append(line)
        inside_body ^= line.count("$$") % 2 == 1
        if not inside_body and line.rstrip().endswith(";"):
            statements.append("\n".join(current))
            current = []
    assert not "\n".join(current).strip(), "a statement in the ledger migration lacks its semicolon"
    return statements


def upgrade() -> None:
    for block in (TABLES, APPEND_ONLY, BALANCES, BALANCED, FUNCTIONS):
        for statement in _statements(block):
            op.execute(statement)


def downgrade() -> None:
    op.execute("DROP SCHEMA ledger CASCADE")
