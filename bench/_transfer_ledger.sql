-- The baseline for bench/ledger.py: a minimal two-account transfer ledger in PL/pgSQL, built
-- the way pgledger (github.com/pgr0ss/pgledger) works, written here from its description:
-- a transfer locks its two accounts in id order, updates both balances (with a version),
-- appends one transfer row and two entry rows that carry the balances before and after.
-- No idempotency keys, no multi-currency checks, no deferred balance check: the least a
-- ledger can do per transfer. Lives in its own schema, next to Penny's ledger.
CREATE SCHEMA transfer_ledger;

CREATE TABLE transfer_ledger.accounts (
    id         bigint PRIMARY KEY,
    currency   text        NOT NULL,
    balance    bigint      NOT NULL DEFAULT 0,
    version    bigint      NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE transfer_ledger.transfers (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    from_account_id bigint      NOT NULL REFERENCES transfer_ledger.accounts (id),
    to_account_id   bigint      NOT NULL REFERENCES transfer_ledger.accounts (id),
    amount          bigint      NOT NULL CHECK (amount > 0),
    created_at      timestamptz NOT NULL DEFAULT now(),
    CHECK (from_account_id <> to_account_id)
);
CREATE INDEX ON transfer_ledger.transfers (from_account_id);
CREATE INDEX ON transfer_ledger.transfers (to_account_id);

CREATE TABLE transfer_ledger.entries (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    account_id       bigint      NOT NULL REFERENCES transfer_ledger.accounts (id),
    transfer_id      bigint      NOT NULL REFERENCES transfer_ledger.transfers (id),
    amount           bigint      NOT NULL,
    previous_balance bigint      NOT NULL,
    current_balance  bigint      NOT NULL,
    account_version  bigint      NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ON transfer_ledger.entries (account_id);
CREATE INDEX ON transfer_ledger.entries (transfer_id);

CREATE FUNCTION transfer_ledger.transfer(p_from bigint, p_to bigint, p_amount bigint) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    v_from transfer_ledger.accounts;
    v_to transfer_ledger.accounts;
    v_transfer bigint;
BEGIN
    IF p_amount <= 0 OR p_from = p_to THEN
        RAISE EXCEPTION 'invalid transfer';
    END IF;
    PERFORM 1 FROM transfer_ledger.accounts WHERE id IN (p_from, p_to) ORDER BY id FOR UPDATE;
    UPDATE transfer_ledger.accounts SET balance = balance - p_amount, version = version + 1, updated_at = now()
     WHERE id = p_from RETURNING * INTO v_from;
    UPDATE transfer_ledger.accounts SET balance = balance + p_amount, version = version + 1, updated_at = now()
     WHERE id = p_to RETURNING * INTO v_to;
    IF v_from.currency <> v_to.currency THEN
        RAISE EXCEPTION 'currencies differ';
    END IF;
    INSERT INTO transfer_ledger.transfers (from_account_id, to_account_id, amount)
    VALUES (p_from, p_to, p_amount) RETURNING id INTO v_transfer;
    INSERT INTO transfer_ledger.entries (account_id, transfer_id, amount, previous_balance, current_balance,
                                         account_version)
    VALUES (p_from, v_transfer, -p_amount, v_from.balance + p_amount, v_from.balance, v_from.version),
           (p_to, v_transfer, p_amount, v_to.balance - p_amount, v_to.balance, v_to.version);
    RETURN v_transfer;
END $$;
