-- A reference for bench/ledger.py: the rows a Penny capture entry writes (one entry, four
-- postings, four balance updates), written the transfer ledger's way (bench/_transfer_ledger.sql)
-- and with none of Penny's guarantees: no idempotency key, no fingerprint, no append-only or
-- balance triggers, no deferred per-entry check, one balance row per account (no slots, so no
-- limit checks either). It answers one question: what does this much row work cost per entry
-- on this server, next to the transfer ledger's two postings? Lives in its own schema.
CREATE SCHEMA entry_floor;

CREATE TABLE entry_floor.accounts (
    id         bigint PRIMARY KEY,
    currency   text        NOT NULL,
    balance    bigint      NOT NULL DEFAULT 0,
    version    bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE entry_floor.entries (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE entry_floor.postings (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entry_id         bigint      NOT NULL REFERENCES entry_floor.entries (id),
    account_id       bigint      NOT NULL REFERENCES entry_floor.accounts (id),
    amount           bigint      NOT NULL,
    previous_balance bigint      NOT NULL,
    current_balance  bigint      NOT NULL,
    account_version  bigint      NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON entry_floor.postings (account_id);
CREATE INDEX ON entry_floor.postings (entry_id);

-- Lock the entry's accounts in id order, check it balances, update each balance, append the
-- entry and its postings (one statement for all four, as the transfer ledger appends its two).
CREATE FUNCTION entry_floor.post(p_accounts bigint[], p_amounts bigint[]) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_entry bigint;
    v_balances bigint[] := '{}';
    v_versions bigint[] := '{}';
    v_account entry_floor.accounts;
BEGIN
    IF cardinality(p_accounts) < 2 OR cardinality(p_accounts) <> cardinality(p_amounts)
       OR (SELECT sum(amount) FROM unnest(p_amounts) AS amount) <> 0 THEN
        RAISE EXCEPTION 'unbalanced entry';
    END IF;
    PERFORM 1 FROM entry_floor.accounts WHERE id = ANY (p_accounts) ORDER BY id FOR UPDATE;
    FOR i IN 1 .. cardinality(p_accounts) LOOP
        UPDATE entry_floor.accounts SET balance = balance + p_amounts[i], version = version + 1, updated_at = now()
         WHERE id = p_accounts[i] RETURNING * INTO v_account;
        v_balances := v_balances || v_account.balance;
        v_versions := v_versions || v_account.version;
    END LOOP;
    INSERT INTO entry_floor.entries DEFAULT VALUES RETURNING id INTO v_entry;
    INSERT INTO entry_floor.postings (entry_id, account_id, amount, previous_balance, current_balance, account_version)
    SELECT v_entry, t.account_id, t.amount, t.balance - t.amount, t.balance, t.version
      FROM unnest(p_accounts, p_amounts, v_balances, v_versions) AS t(account_id, amount, balance, version);
    RETURN v_entry;
END $$;
