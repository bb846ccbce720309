"""The ledger's operations: open accounts, post entries, two-phase holds, reversals, reads, verify.

Every function takes an `AsyncConnection` first and runs inside the caller's transaction: it
never begins or commits. A payment transition can therefore append its ledger entry and its
own rows atomically:

    async with engine.begin() as connection:
        await open_accounts(connection, chart.accounts_for(draft))
        await post(connection, draft)
        ...  # the payment row, the audit event, the outbox row

`Ledger` wraps an engine with the same methods, one transaction each (tests, benchmarks).

Input is validated before any SQL is sent (the transaction stays usable after such an
error). What only the database can know — unknown accounts, limits, idempotency conflicts —
is checked there, in the same single round trip as the insert (`ledger.post_entry`); such an
error aborts the caller's transaction, which must then be rolled back.

**Idempotency.** Every entry has a unique key (at most 255 characters). Posting a key again
with the same postings (in any order), kind and reversal target returns the original entry
with `created=False`; a different request under a used key raises `IdempotencyConflict`.
Description, metadata and effective time are not part of the comparison.

**Two-phase entries** (authorisation holds) follow TigerBeetle's two-phase transfers: a
pending entry has exactly two postings, one debit and one credit of the same amount. It
moves only the *pending* balances (a pending debit on a must-not-go-negative account already
counts against its limit). It is resolved once, by a new entry that points at it:
`post_pending_final(amount)` posts the same two accounts for `amount` (1..held, default all)
and `void_pending` posts nothing; either way everything held is released, so a partial
capture releases the rest. Nothing is updated: the pending entry's status is derived from
the entry that resolved it.

**Limits.** An account with `must_not_go_negative` keeps its normal-direction balance,
minus pending amounts leaving it, at or above zero. The check runs in the database right
after the balance row is locked; rows are locked in ascending account id order by every
writer, so concurrent entries serialise per account and never deadlock.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import re
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import asyncpg
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ledger.errors import (
    SQLSTATE_ERRORS,
    AccountConflict,
    InvalidAccount,
    InvalidEntry,
    KeyTooLong,
    LedgerError,
    NotReversible,
    UnbalancedEntry,
    UnknownAccount,
    UnknownEntry,
)
from ledger.models import (
    ACCOUNT_TYPES,
    DEBIT_NORMAL_TYPES,
    AccountSpec,
    Balance,
    EntryDraft,
    EntryStatus,
    Finding,
    PostedEntry,
    Posting,
)
from ledger.money import check_amount, exponent

IDEMPOTENCY_KEY_LENGTH_MAX = 255
DESCRIPTION_LENGTH_MAX = 1000
POSTINGS_MAX = 100
ENTRIES_PER_BATCH_MAX = 100
METADATA_KEYS_MAX = 50
METADATA_KEY_LENGTH_MAX = 40
METADATA_VALUE_LENGTH_MAX = 500
ACCOUNT_CODE_LENGTH_MAX = 200
ACCOUNTS_PER_CALL_MAX = 1000
PAGE_SIZE_MAX = 100
ENTRIES_BY_METADATA_MAX = 1000
FINDINGS_PER_CHECK_MAX = 100
ACCOUNT_CODE_PATTERN = re.compile(r"^[A-Za-z0-9_.\-]+(:[A-Za-z0-9_.\-]+)*$")


# ---------------------------------------------------------------------------------------------
# Validation (pure; runs before any SQL)


def _check_key(key: str, param: str = "idempotency_key") -> None:
    if not isinstance(key, str) or not 1 <= len(key) <= IDEMPOTENCY_KEY_LENGTH_MAX:
        raise KeyTooLong(f"{param} must be 1..{IDEMPOTENCY_KEY_LENGTH_MAX} characters", param=param)


def _check_description(description: str) -> None:
    if not isinstance(description, str) or len(description) > DESCRIPTION_LENGTH_MAX:
        raise InvalidEntry(f"description must be a string of at most {DESCRIPTION_LENGTH_MAX} characters")


def _check_metadata(metadata: Mapping[str, str]) -> dict[str, str]:
    if len(metadata) > METADATA_KEYS_MAX:
        raise InvalidEntry(f"metadata has more than {METADATA_KEYS_MAX} keys", param="metadata")
    for key, value in metadata.items():
        if not isinstance(key, str) or not 1 <= len(key) <= METADATA_KEY_LENGTH_MAX:
            raise InvalidEntry(f"metadata keys must be 1..{METADATA_KEY_LENGTH_MAX} characters", param="metadata")
        if not isinstance(value, str) or len(value) > METADATA_VALUE_LENGTH_MAX:
            raise InvalidEntry(
                f"metadata value of {key!r} must be a string of at most {METADATA_VALUE_LENGTH_MAX} characters",
                param=f"metadata.{key}",
            )
    return dict(metadata)


def check_account_code(code: str) -> str:
    """Return `code` if it is a well-formed account code ("seller:acct_1:payable")."""
    if not isinstance(code, str) or len(code) > ACCOUNT_CODE_LENGTH_MAX or not ACCOUNT_CODE_PATTERN.match(code):
        raise InvalidAccount(f"account code {code!r} is malformed", param="account")
    return code


def _check_postings(postings: Sequence[Posting]) -> None:
    if not isinstance(postings, tuple | list) or len(postings) < 2:
        raise InvalidEntry("an entry needs at least two postings", param="postings")
    if len(postings) > POSTINGS_MAX:
        raise InvalidEntry(f"an entry has at most {POSTINGS_MAX} postings", param="postings")
    sums: dict[str, int] = {}
    for posting in postings:
        if not isinstance(posting, Posting):
            raise InvalidEntry(f"not a Posting: {posting!r}", param="postings")
        check_account_code(posting.account)
        exponent(posting.currency)
        check_amount(posting.amount, param="postings.amount", allow_negative=True)
        sums[posting.currency] = sums.get(posting.currency, 0) + posting.amount
    unbalanced = {currency: total for currency, total in sums.items() if total != 0}
    if unbalanced:
        raise UnbalancedEntry(f"debits and credits differ: {unbalanced} (positive = debits exceed credits)")


def _check_draft(draft: EntryDraft, *, pending: bool) -> None:
    if not isinstance(draft, EntryDraft):
        raise InvalidEntry(f"not an EntryDraft: {draft!r}")
    _check_key(draft.idempotency_key)
    _check_description(draft.description)
    _check_metadata(draft.metadata)
    _check_postings(draft.postings)
    if draft.effective_at is not None and draft.effective_at.tzinfo is None:
        raise InvalidEntry("effective_at must be timezone-aware", param="effective_at")
    if pending:
        if len(draft.postings) != 2:
            raise InvalidEntry("a pending entry has exactly two postings: one debit, one credit", param="postings")
        if draft.reverses_entry_id is not None:
            raise InvalidEntry("a pending entry cannot reverse another entry", param="reverses_entry_id")


def _fingerprint(kind: str, postings: Sequence[Posting], reverses_entry_id: int | None) -> str:
    lines = sorted((posting.account, posting.amount, posting.currency) for posting in postings)
    canonical = json.dumps([kind, reverses_entry_id, lines], separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# Database errors


def _translated(error: BaseException | None) -> LedgerError | None:
    """The LedgerError for a PostgreSQL error raised by the ledger's SQL (None: not one of ours)."""
    sqlstate = getattr(error, "sqlstate", None)
    error_class = SQLSTATE_ERRORS.get(sqlstate or "")
    if error_class is None:
        return None
    message = getattr(error, "message", None) or str(error)
    if sqlstate == "22003":
        message = f"a balance would leave the signed 64-bit range ({message})"
    return error_class(message, param=getattr(error, "detail", None))


def _ledger_error(error: DBAPIError) -> LedgerError | None:
    translated = _translated(error.orig)
    cause = error.orig.__cause__ if error.orig is not None else None
    if translated is not None and isinstance(cause, asyncpg.PostgresError):
        # The driver's own error has the server's message without SQLAlchemy's decoration.
        return _translated(cause) or translated
    return translated


async def _execute(connection: AsyncConnection, statement: Any, parameters: dict[str, Any]) -> Any:
    try:
        return await connection.execute(statement, parameters)
    except DBAPIError as error:
        translated = _ledger_error(error)
        if translated is None:
            raise
        raise translated from error


def _json(value: Any) -> Any:
    return json.loads(value) if isinstance(value, str | bytes) else value


# ---------------------------------------------------------------------------------------------
# Accounts

_OPEN_ACCOUNTS = text(
    """
    WITH input AS (
        SELECT * FROM unnest(CAST(:codes AS text[]), CAST(:types AS text[]), CAST(:currencies AS text[]),
                             CAST(:limits AS boolean[]), CAST(:metadata AS text[]))
                   AS t(code, type, currency, must_not_go_negative, metadata)
    ), inserted AS (
        INSERT INTO ledger.accounts (code, type, currency, must_not_go_negative, metadata)
        SELECT code, type, currency, must_not_go_negative, CAST(metadata AS jsonb) FROM input ORDER BY code
        ON CONFLICT (code) DO NOTHING
        RETURNING code
    )
    SELECT i.code, a.type, a.currency, a.must_not_go_negative
      FROM input i JOIN ledger.accounts a ON a.code = i.code
     WHERE (a.type, a.currency, a.must_not_go_negative) IS DISTINCT FROM (i.type, i.currency, i.must_not_go_negative)
    """
)


def _check_spec(spec: AccountSpec) -> None:
    check_account_code(spec.code)
    if spec.type not in ACCOUNT_TYPES:
        raise InvalidAccount(f"account type {spec.type!r} is not one of {ACCOUNT_TYPES}", param="type")
    exponent(spec.currency)
    if not isinstance(spec.must_not_go_negative, bool):
        raise InvalidAccount("must_not_go_negative must be a bool", param="must_not_go_negative")
    _check_metadata(spec.metadata)


def _accounts_to_open(specs: Sequence[AccountSpec]) -> list[AccountSpec]:
    """`specs` checked, deduplicated and sorted by code (the order every opener inserts in)."""
    unique: dict[str, AccountSpec] = {}
    for spec in specs:
        _check_spec(spec)
        if spec.code in unique and unique[spec.code] != spec:
            raise AccountConflict(f"account {spec.code} is specified twice, differently", param=spec.code)
        unique[spec.code] = spec
    if len(unique) > ACCOUNTS_PER_CALL_MAX:
        raise InvalidAccount(f"at most {ACCOUNTS_PER_CALL_MAX} accounts per call")
    return sorted(unique.values(), key=lambda spec: spec.code)


async def open_accounts(connection: AsyncConnection, specs: Sequence[AccountSpec]) -> None:
    """Open accounts that do not exist yet. An existing account with the same type, currency
    and limit is left alone; one that differs raises AccountConflict."""
    ordered = _accounts_to_open(specs)
    if not ordered:
        return
    result = await _execute(
        connection,
        _OPEN_ACCOUNTS,
        {
            "codes": [spec.code for spec in ordered],
            "types": [spec.type for spec in ordered],
            "currencies": [spec.currency for spec in ordered],
            "limits": [spec.must_not_go_negative for spec in ordered],
            "metadata": [json.dumps(dict(spec.metadata)) for spec in ordered],
        },
    )
    conflict = result.first()
    if conflict is not None:
        code, existing_type, existing_currency, existing_limit = conflict
        raise AccountConflict(
            f"account {code} exists as {existing_type} in {existing_currency}"
            f" (must_not_go_negative={existing_limit}), which differs from the one requested",
            param=code,
        )


# ---------------------------------------------------------------------------------------------
# Posting

# ledger.post_entries (migration 0011): a batch of entries, and the accounts to open first, in
# one statement. The asyncpg form is sent on the driver connection (a prepared statement that
# asyncpg caches per connection); the SQLAlchemy form is the same call for connections where
# that is not possible.
_POST_ENTRIES_ARGUMENTS = (
    ("keys", "text[]"),
    ("fingerprints", "text[]"),
    ("kinds", "text[]"),
    ("descriptions", "text[]"),
    ("metadata", "jsonb[]"),
    ("effective_at", "timestamptz[]"),
    ("reverses", "bigint[]"),
    ("entry_of", "integer[]"),
    ("lines", "smallint[]"),
    ("codes", "text[]"),
    ("amounts", "bigint[]"),
    ("currencies", "text[]"),
    ("open_codes", "text[]"),
    ("open_types", "text[]"),
    ("open_currencies", "text[]"),
    ("open_limits", "boolean[]"),
    ("open_metadata", "jsonb[]"),
)
_POST_ENTRIES_DRIVER_SQL = "SELECT ord, entry_id, created FROM ledger.post_entries({})".format(
    ", ".join(f"${number}::{sql_type}" for number, (_, sql_type) in enumerate(_POST_ENTRIES_ARGUMENTS, start=1))
)
_POST_ENTRIES = text(
    "SELECT ord, entry_id, created FROM ledger.post_entries({})".format(
        ", ".join(f"CAST(:{name} AS {sql_type})" for name, sql_type in _POST_ENTRIES_ARGUMENTS)
    )
)

_RESOLVE_PENDING = text(
    """
    SELECT entry_id, created FROM ledger.resolve_pending(
        CAST(:key AS text), CAST(:pending_entry_id AS bigint), CAST(:kind AS text), CAST(:amount AS bigint),
        CAST(:description AS text))
    """
)


async def _driver_connection(connection: AsyncConnection) -> Any | None:
    """The asyncpg connection under `connection`, inside the caller's transaction, or None.

    Sending the ledger's one statement on the driver connection costs a fifth of the client
    CPU of sending it through SQLAlchemy (bench/ledger.py), and the client's CPU is most of a
    posting's cost. It needs SQLAlchemy's asyncpg adapter to have begun the transaction on the
    driver connection, which only the adapter's own (private) attributes tell; where they are
    not as expected (another driver, another SQLAlchemy version), and where the caller's
    connection has not begun a transaction (SQLAlchemy would begin one on execute), this
    returns None and the statement goes through SQLAlchemy, with the same effect.
    """
    if not connection.in_transaction():
        return None
    adapted = (await connection.get_raw_connection()).dbapi_connection
    driver = getattr(adapted, "_connection", None)
    start = getattr(adapted, "_start_transaction", None)
    if not isinstance(driver, asyncpg.Connection) or not inspect.iscoroutinefunction(start):
        return None
    if getattr(adapted, "isolation_level", None) == "autocommit":
        return driver  # SQLAlchemy sends no BEGIN either: each statement is its own transaction
    if getattr(adapted, "_transaction", "missing") is None:
        await start()  # what the adapter does before its first statement in a transaction
    return driver if getattr(adapted, "_transaction", None) is not None else None


async def statement_driver(connection: AsyncConnection) -> asyncpg.Connection | None:
    """The asyncpg connection under a pooled SQLAlchemy connection that has begun no
    transaction: a statement sent on it is its own transaction, one round trip. None where
    SQLAlchemy's asyncpg adapter is not as expected (the caller then goes through SQLAlchemy)."""
    adapted = (await connection.get_raw_connection()).dbapi_connection
    driver = getattr(adapted, "_connection", None)
    if not isinstance(driver, asyncpg.Connection) or getattr(adapted, "_transaction", "missing") is not None:
        return None
    return driver


async def _post_entries_rows(
    connection: AsyncConnection, driver: Any | None, parameters: dict[str, Any]
) -> list[tuple[int, int, bool]]:
    if driver is None:
        result = await _execute(connection, _POST_ENTRIES, parameters)
        return [(row[0], row[1], row[2]) for row in result.all()]
    try:
        records = await driver.fetch(
            _POST_ENTRIES_DRIVER_SQL, *(parameters[name] for name, _ in _POST_ENTRIES_ARGUMENTS)
        )
    except asyncpg.PostgresError as error:
        translated = _translated(error)
        if translated is None:
            raise
        raise translated from error
    return [(record[0], record[1], record[2]) for record in records]


def _post_entries_parameters(
    drafts: Sequence[tuple[EntryDraft, str]], accounts: Sequence[AccountSpec]
) -> dict[str, Any]:
    keys = [draft.idempotency_key for draft, _ in drafts]
    if len(set(keys)) != len(keys):
        raise InvalidEntry("an idempotency key appears twice in one batch", param="idempotency_key")
    entry_of: list[int] = []
    lines: list[int] = []
    postings: list[Posting] = []
    for number, (draft, _) in enumerate(drafts, start=1):
        for line, posting in enumerate(draft.postings):
            entry_of.append(number)
            lines.append(line)
            postings.append(posting)
    to_open = _accounts_to_open(accounts)
    return {
        "keys": keys,
        "fingerprints": [_fingerprint(kind, draft.postings, draft.reverses_entry_id) for draft, kind in drafts],
        "kinds": [kind for _, kind in drafts],
        "descriptions": [draft.description for draft, _ in drafts],
        "metadata": [json.dumps(dict(draft.metadata)) for draft, _ in drafts],
        "effective_at": [draft.effective_at for draft, _ in drafts],
        "reverses": [draft.reverses_entry_id for draft, _ in drafts],
        "entry_of": entry_of,
        "lines": lines,
        "codes": [posting.account for posting in postings],
        "amounts": [posting.amount for posting in postings],
        "currencies": [posting.currency for posting in postings],
        "open_codes": [spec.code for spec in to_open],
        "open_types": [spec.type for spec in to_open],
        "open_currencies": [spec.currency for spec in to_open],
        "open_limits": [spec.must_not_go_negative for spec in to_open],
        "open_metadata": [json.dumps(dict(spec.metadata)) for spec in to_open],
    }


# For callers that post entries inside a statement of their own (activities/payments.py's
# one-statement transition): the argument types, and the arguments for a batch of drafts.
POST_ENTRIES_SQL_TYPES: tuple[str, ...] = tuple(sql_type for _, sql_type in _POST_ENTRIES_ARGUMENTS)


def post_entries_arguments(drafts: Sequence[tuple[EntryDraft, str]], accounts: Sequence[AccountSpec]) -> list[Any]:
    """`ledger.post_entries`' arguments, in order, for `drafts` (each with its kind, `posted` or
    `pending`) after opening `accounts`; each draft checked as `post` and `post_pending` check it."""
    if not 1 <= len(drafts) <= ENTRIES_PER_BATCH_MAX:
        raise InvalidEntry(f"a batch takes 1..{ENTRIES_PER_BATCH_MAX} entries", param="drafts")
    for draft, kind in drafts:
        _check_draft(draft, pending=kind == "pending")
    parameters = _post_entries_parameters(drafts, accounts)
    return [parameters[name] for name, _ in _POST_ENTRIES_ARGUMENTS]


def ledger_error(error: BaseException) -> LedgerError | None:
    """The LedgerError for a PostgreSQL error the ledger's SQL raised (None: not one of the ledger's)."""
    return _translated(error)


async def _post_drafts(
    connection: AsyncConnection,
    drafts: Sequence[tuple[EntryDraft, str]],
    accounts: Sequence[AccountSpec] = (),
    *,
    driver: Any | None = None,
) -> list[PostedEntry]:
    """Post `drafts` (each with its kind), after opening `accounts`, in one statement."""
    parameters = _post_entries_parameters(drafts, accounts)
    if driver is None:
        driver = await _driver_connection(connection)
    rows = await _post_entries_rows(connection, driver, parameters)
    posted: list[PostedEntry] = []
    for (draft, kind), (_, entry_id, created) in zip(drafts, sorted(rows), strict=True):
        if not created:
            posted.append(await get_entry(connection, entry_id, created=False))
            continue
        posted.append(
            PostedEntry(
                id=entry_id,
                idempotency_key=draft.idempotency_key,
                status="pending" if kind == "pending" else "posted",
                postings=tuple(draft.postings),
                description=draft.description,
                created=True,
                metadata=dict(draft.metadata),
                reverses_entry_id=draft.reverses_entry_id,
                effective_at=draft.effective_at,
                kind=kind,  # type: ignore[arg-type]
            )
        )
    return posted


async def post(connection: AsyncConnection, draft: EntryDraft, *, accounts: Sequence[AccountSpec] = ()) -> PostedEntry:
    """Append a posted entry. Idempotent by `draft.idempotency_key` (see module docstring).

    `accounts` are opened first, in the same statement (as `open_accounts` would)."""
    _check_draft(draft, pending=False)
    return (await _post_drafts(connection, [(draft, "posted")], accounts))[0]


async def post_many(
    connection: AsyncConnection, drafts: Sequence[EntryDraft], *, accounts: Sequence[AccountSpec] = ()
) -> list[PostedEntry]:
    """Append several posted entries (at most ENTRIES_PER_BATCH_MAX, distinct keys) in one
    statement, after opening `accounts`. Each entry is idempotent by its own key, as in `post`;
    the balance rows are updated once per account for the whole batch."""
    if not isinstance(drafts, tuple | list) or not 1 <= len(drafts) <= ENTRIES_PER_BATCH_MAX:
        raise InvalidEntry(f"post_many takes 1..{ENTRIES_PER_BATCH_MAX} entries", param="drafts")
    for draft in drafts:
        _check_draft(draft, pending=False)
    return await _post_drafts(connection, [(draft, "posted") for draft in drafts], accounts)


async def post_pending(
    connection: AsyncConnection, draft: EntryDraft, *, accounts: Sequence[AccountSpec] = ()
) -> PostedEntry:
    """Append a pending (two-phase) entry: exactly two postings; moves only pending balances."""
    _check_draft(draft, pending=True)
    return (await _post_drafts(connection, [(draft, "pending")], accounts))[0]


async def _resolve(
    connection: AsyncConnection, pending_entry_id: int, kind: str, amount: int | None, idempotency_key: str
) -> PostedEntry:
    _check_key(idempotency_key)
    check_amount(pending_entry_id, param="pending_entry_id")
    if amount is not None:
        check_amount(amount)
    description = (
        f"Post pending entry {pending_entry_id}" + ("" if amount is None else f" for {amount}")
        if kind == "posted"
        else f"Void pending entry {pending_entry_id}"
    )
    row = (
        await _execute(
            connection,
            _RESOLVE_PENDING,
            {
                "key": idempotency_key,
                "pending_entry_id": pending_entry_id,
                "kind": kind,
                "amount": amount,
                "description": description,
            },
        )
    ).one()
    entry_id, created = row
    return await get_entry(connection, entry_id, created=created)


async def post_pending_final(
    connection: AsyncConnection, pending_entry_id: int, amount: int | None, idempotency_key: str
) -> PostedEntry:
    """Post `amount` (1..held; None = all) of a pending entry and release everything it held."""
    return await _resolve(connection, pending_entry_id, "posted", amount, idempotency_key)


async def void_pending(connection: AsyncConnection, pending_entry_id: int, idempotency_key: str) -> PostedEntry:
    """Release everything a pending entry held, posting nothing (cancel, expiry)."""
    return await _resolve(connection, pending_entry_id, "void", None, idempotency_key)


async def reverse(connection: AsyncConnection, entry_id: int, reason: str, idempotency_key: str) -> PostedEntry:
    """Append the mirror of posted entry `entry_id` (every amount negated). An entry is
    reversed at most once; pending entries are voided instead, reversals are not reversed."""
    _check_key(idempotency_key)
    _check_description(reason)
    original = await get_entry(connection, entry_id)
    if original.kind != "posted" or original.reverses_entry_id is not None:
        raise NotReversible(
            f"entry {entry_id} is a {original.kind} entry"
            + (" that reverses another" if original.reverses_entry_id else "")
            + "; only posted, non-reversal entries can be reversed",
            param="entry_id",
        )
    draft = EntryDraft(
        idempotency_key=idempotency_key,
        description=f"Reversal of entry {entry_id}: {reason}"[:DESCRIPTION_LENGTH_MAX],
        postings=tuple(Posting(posting.account, -posting.amount, posting.currency) for posting in original.postings),
        reverses_entry_id=entry_id,
        metadata={**original.metadata, "reversal_reason": reason[:METADATA_VALUE_LENGTH_MAX]},
    )
    return (await _post_drafts(connection, [(draft, "posted")]))[0]


# ---------------------------------------------------------------------------------------------
# Reads

_ENTRY_COLUMNS = """
    e.id, e.idempotency_key, e.kind, e.description, e.metadata, e.reverses_entry_id, e.resolves_entry_id,
    e.effective_at, r.id AS resolved_by_entry_id, r.kind AS resolver_kind,
    (SELECT coalesce(json_agg(json_build_array(a.code, p.amount, p.currency) ORDER BY p.line), '[]')
       FROM ledger.postings p JOIN ledger.accounts a ON a.id = p.account_id
      WHERE p.entry_id = e.id) AS postings
"""

_ENTRIES_BY_ID = text(
    f"""
    SELECT {_ENTRY_COLUMNS}
      FROM ledger.entries e LEFT JOIN ledger.entries r ON r.resolves_entry_id = e.id
     WHERE e.id = ANY(CAST(:ids AS bigint[]))
    """
)

_ENTRIES_FOR_ACCOUNT = text(
    f"""
    WITH ids AS (
        SELECT DISTINCT p.entry_id
          FROM ledger.postings p JOIN ledger.accounts a ON a.id = p.account_id
         WHERE a.code = :account AND (CAST(:after AS bigint) IS NULL OR p.entry_id < CAST(:after AS bigint))
         ORDER BY p.entry_id DESC
         LIMIT :limit
    )
    SELECT {_ENTRY_COLUMNS}
      FROM ids JOIN ledger.entries e ON e.id = ids.entry_id
      LEFT JOIN ledger.entries r ON r.resolves_entry_id = e.id
     ORDER BY e.id DESC
    """
)

# payment_id has an index (migration 0002); any other key is a scan of the entries table.
_ENTRIES_BY_PAYMENT_ID = text(
    f"""
    SELECT {_ENTRY_COLUMNS}
      FROM ledger.entries e LEFT JOIN ledger.entries r ON r.resolves_entry_id = e.id
     WHERE e.metadata ? 'payment_id' AND e.metadata ->> 'payment_id' = CAST(:value AS text)
     ORDER BY e.id
     LIMIT :limit
    """
)

_ENTRIES_BY_METADATA = text(
    f"""
    SELECT {_ENTRY_COLUMNS}
      FROM ledger.entries e LEFT JOIN ledger.entries r ON r.resolves_entry_id = e.id
     WHERE e.metadata @> jsonb_build_object(CAST(:key AS text), CAST(:value AS text))
     ORDER BY e.id
     LIMIT :limit
    """
)


# A pending entry's status follows the kind of the entry that resolved it (none yet: still pending).
_PENDING_STATUS_BY_RESOLVER_KIND: dict[str | None, EntryStatus] = {
    None: "pending",
    "posted": "posted",
    "void": "voided",
}


def _entry_from_row(row: Any, created: bool = False) -> PostedEntry:
    status: EntryStatus
    if row.kind == "void":
        status = "voided"
    elif row.kind == "posted":
        status = "posted"
    else:
        status = _PENDING_STATUS_BY_RESOLVER_KIND[row.resolver_kind]
    return PostedEntry(
        id=row.id,
        idempotency_key=row.idempotency_key,
        status=status,
        postings=tuple(Posting(code, amount, currency) for code, amount, currency in _json(row.postings)),
        description=row.description,
        created=created,
        metadata=_json(row.metadata),
        reverses_entry_id=row.reverses_entry_id,
        resolves_entry_id=row.resolves_entry_id,
        resolved_by_entry_id=row.resolved_by_entry_id,
        effective_at=row.effective_at,
        kind=row.kind,
    )


async def get_entry(connection: AsyncConnection, entry_id: int, *, created: bool = False) -> PostedEntry:
    """The entry with id `entry_id` (UnknownEntry if there is none)."""
    rows = (await connection.execute(_ENTRIES_BY_ID, {"ids": [entry_id]})).all()
    if not rows:
        raise UnknownEntry(f"entry {entry_id} does not exist", param="entry_id")
    return _entry_from_row(rows[0], created=created)


def _check_limit(limit: int) -> None:
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= PAGE_SIZE_MAX:
        raise InvalidEntry(f"limit must be 1..{PAGE_SIZE_MAX}", param="limit")


async def entries(
    connection: AsyncConnection, account: str, *, limit: int = 50, starting_after: int | None = None
) -> list[PostedEntry]:
    """Entries touching `account`, newest first; pass the last id as `starting_after` for the next page."""
    check_account_code(account)
    _check_limit(limit)
    rows = await connection.execute(_ENTRIES_FOR_ACCOUNT, {"account": account, "after": starting_after, "limit": limit})
    return [_entry_from_row(row) for row in rows]


async def entries_by_metadata(connection: AsyncConnection, key: str, value: str) -> list[PostedEntry]:
    """Entries whose metadata has `key` = `value`, oldest first, at most 1000.

    "payment_id" is indexed; other keys scan the entries table (operator use only)."""
    _check_metadata({key: value})
    if key == "payment_id":
        rows = await connection.execute(_ENTRIES_BY_PAYMENT_ID, {"value": value, "limit": ENTRIES_BY_METADATA_MAX})
    else:
        rows = await connection.execute(
            _ENTRIES_BY_METADATA, {"key": key, "value": value, "limit": ENTRIES_BY_METADATA_MAX}
        )
    return [_entry_from_row(row) for row in rows]


# A balance is the sum of the account's slot rows (1, or 16 for accounts without a limit).
_BALANCE_COLUMNS = """
    a.code, a.currency, a.type, a.must_not_go_negative,
    sum(b.debits_posted) AS debits_posted, sum(b.credits_posted) AS credits_posted,
    sum(b.debits_pending) AS debits_pending, sum(b.credits_pending) AS credits_pending, sum(b.version) AS version
"""

_BALANCE = text(
    f"""
    SELECT {_BALANCE_COLUMNS}
      FROM ledger.accounts a JOIN ledger.account_balances b ON b.account_id = a.id
     WHERE a.code = :account
     GROUP BY a.id
    """
)

_BALANCE_AS_OF = text(
    """
    SELECT a.code, a.currency, a.type, a.must_not_go_negative,
           coalesce(sum(p.amount) FILTER (WHERE e.kind = 'posted' AND p.amount > 0), 0) AS debits_posted,
           coalesce(-sum(p.amount) FILTER (WHERE e.kind = 'posted' AND p.amount < 0), 0) AS credits_posted,
           coalesce(sum(p.amount) FILTER (WHERE e.kind = 'pending' AND p.amount > 0 AND r.id IS NULL), 0)
               AS debits_pending,
           coalesce(-sum(p.amount) FILTER (WHERE e.kind = 'pending' AND p.amount < 0 AND r.id IS NULL), 0)
               AS credits_pending,
           0 AS version
      FROM ledger.accounts a
      LEFT JOIN ledger.postings p ON p.account_id = a.id
      LEFT JOIN ledger.entries e ON e.id = p.entry_id AND e.effective_at <= :as_of
      LEFT JOIN ledger.entries r ON r.resolves_entry_id = e.id AND r.effective_at <= :as_of
     WHERE a.code = :account
     GROUP BY a.id
    """
)

_LIST_ACCOUNTS = text(
    f"""
    SELECT {_BALANCE_COLUMNS}
      FROM ledger.accounts a JOIN ledger.account_balances b ON b.account_id = a.id
     WHERE CAST(:after AS text) IS NULL OR a.code > CAST(:after AS text)
     GROUP BY a.id
     ORDER BY a.code
     LIMIT :limit
    """
)


def _balance_from_row(row: Any) -> Balance:
    debits_posted, credits_posted = int(row.debits_posted), int(row.credits_posted)
    debits_pending, credits_pending = int(row.debits_pending), int(row.credits_pending)
    direction = 1 if row.type in DEBIT_NORMAL_TYPES else -1
    return Balance(
        account=row.code,
        currency=row.currency,
        posted=direction * (debits_posted - credits_posted),
        pending=direction * (debits_pending - credits_pending),
        version=int(row.version),
        type=row.type,
        must_not_go_negative=row.must_not_go_negative,
        debits_posted=debits_posted,
        credits_posted=credits_posted,
        debits_pending=debits_pending,
        credits_pending=credits_pending,
    )


async def balance(connection: AsyncConnection, account: str, as_of: datetime | None = None) -> Balance:
    """The account's balance now (one row read), or as of a past effective time (summed)."""
    check_account_code(account)
    if as_of is None:
        row = (await connection.execute(_BALANCE, {"account": account})).first()
    else:
        if as_of.tzinfo is None:
            raise InvalidEntry("as_of must be timezone-aware", param="as_of")
        row = (await connection.execute(_BALANCE_AS_OF, {"account": account, "as_of": as_of})).first()
    if row is None:
        raise UnknownAccount(f"account {account} does not exist", param=account)
    return _balance_from_row(row)


async def list_accounts(
    connection: AsyncConnection, *, limit: int = 50, starting_after: str | None = None
) -> list[Balance]:
    """Accounts with their balances, ordered by code; `starting_after` is the last code seen."""
    _check_limit(limit)
    rows = await connection.execute(_LIST_ACCOUNTS, {"after": starting_after, "limit": limit})
    return [_balance_from_row(row) for row in rows]


# ---------------------------------------------------------------------------------------------
# Verify

_COMPUTED_BALANCES = """
    SELECT p.account_id,
           coalesce(sum(p.amount) FILTER (WHERE e.kind = 'posted' AND p.amount > 0), 0) AS debits_posted,
           coalesce(-sum(p.amount) FILTER (WHERE e.kind = 'posted' AND p.amount < 0), 0) AS credits_posted,
           coalesce(sum(p.amount) FILTER (WHERE e.kind = 'pending' AND p.amount > 0 AND r.id IS NULL), 0)
               AS debits_pending,
           coalesce(-sum(p.amount) FILTER (WHERE e.kind = 'pending' AND p.amount < 0 AND r.id IS NULL), 0)
               AS credits_pending
      FROM ledger.postings p JOIN ledger.entries e ON e.id = p.entry_id
      LEFT JOIN ledger.entries r ON r.resolves_entry_id = e.id
     GROUP BY p.account_id
"""

# (finding code, SQL returning (entry_id, account, currency, message) rows)
_CHECKS: tuple[tuple[str, str], ...] = (
    (
        "unbalanced_entry",
        """
        SELECT entry_id, NULL, currency, format('entry %s: postings in %s sum to %s, not 0', entry_id, currency,
               sum(amount))
          FROM ledger.postings GROUP BY entry_id, currency HAVING sum(amount) <> 0
        """,
    ),
    (
        "malformed_entry",
        """
        SELECT e.id, NULL, NULL, format('%s entry %s has %s posting(s)', e.kind, e.id, count(p.line))
          FROM ledger.entries e LEFT JOIN ledger.postings p ON p.entry_id = e.id
         GROUP BY e.id
        HAVING (e.kind = 'void' AND count(p.line) > 0) OR (e.kind <> 'void' AND count(p.line) < 2)
            OR (e.kind = 'pending' AND count(p.line) <> 2)
        """,
    ),
    (
        "ledger_unbalanced",
        """
        SELECT NULL, NULL, a.currency,
               format('%s: posted debits minus credits over all accounts is %s, pending %s', a.currency,
                      sum(b.debits_posted) - sum(b.credits_posted), sum(b.debits_pending) - sum(b.credits_pending))
          FROM ledger.account_balances b JOIN ledger.accounts a ON a.id = b.account_id
         GROUP BY a.currency
        HAVING sum(b.debits_posted) <> sum(b.credits_posted) OR sum(b.debits_pending) <> sum(b.credits_pending)
        """,
    ),
    (
        "balance_mismatch",
        f"""
        WITH computed AS ({_COMPUTED_BALANCES}),
        stored AS (
            SELECT account_id, sum(debits_posted) AS debits_posted, sum(credits_posted) AS credits_posted,
                   sum(debits_pending) AS debits_pending, sum(credits_pending) AS credits_pending
              FROM ledger.account_balances GROUP BY account_id
        )
        SELECT NULL, a.code, a.currency,
               format('account %s: stored balance (%s, %s, %s, %s) differs from its postings (%s, %s, %s, %s)',
                      a.code, b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending,
                      coalesce(c.debits_posted, 0), coalesce(c.credits_posted, 0),
                      coalesce(c.debits_pending, 0), coalesce(c.credits_pending, 0))
          FROM ledger.accounts a
          LEFT JOIN stored b ON b.account_id = a.id
          LEFT JOIN computed c ON c.account_id = a.id
         WHERE b.account_id IS NULL
            OR (b.debits_posted, b.credits_posted, b.debits_pending, b.credits_pending)
               IS DISTINCT FROM (coalesce(c.debits_posted, 0), coalesce(c.credits_posted, 0),
                                 coalesce(c.debits_pending, 0), coalesce(c.credits_pending, 0))
        """,
    ),
    (
        "limit_crossed",
        """
        SELECT NULL, a.code, a.currency, format('account %s must not go negative but is below zero', a.code)
          FROM ledger.account_balances b JOIN ledger.accounts a ON a.id = b.account_id
         WHERE a.must_not_go_negative
         GROUP BY a.id
        HAVING (a.type IN ('asset', 'expense')
                AND sum(b.credits_posted) + sum(b.credits_pending) > sum(b.debits_posted))
            OR (a.type NOT IN ('asset', 'expense')
                AND sum(b.debits_posted) + sum(b.debits_pending) > sum(b.credits_posted))
        """,
    ),
    (
        "currency_mismatch",
        """
        SELECT p.entry_id, a.code, p.currency, format('entry %s posts %s to %s account %s', p.entry_id,
               p.currency, a.currency, a.code)
          FROM ledger.postings p JOIN ledger.accounts a ON a.id = p.account_id
         WHERE p.currency <> a.currency
        """,
    ),
    (
        "resolution_exceeds_pending",
        """
        SELECT f.entry_id, a.code, f.currency,
               format('entry %s posts %s to %s, more than pending entry %s held', f.entry_id, f.amount, a.code,
                      e.resolves_entry_id)
          FROM ledger.entries e
          JOIN ledger.postings f ON f.entry_id = e.id
          JOIN ledger.accounts a ON a.id = f.account_id
          LEFT JOIN ledger.postings p ON p.entry_id = e.resolves_entry_id AND p.account_id = f.account_id
                                     AND sign(p.amount) = sign(f.amount)
         WHERE e.resolves_entry_id IS NOT NULL AND (p.entry_id IS NULL OR abs(f.amount) > abs(p.amount))
        """,
    ),
)


async def verify(connection: AsyncConnection) -> list[Finding]:
    """Check the whole ledger; return what is wrong (empty = all good). Never raises.

    Checks: every entry balances per currency and has a legal number of postings; all
    balances sum to zero per currency (posted and pending); every stored balance equals
    the sum of its postings; no limit is crossed; posting currencies match their accounts;
    no resolution posts more than its pending entry held.
    """
    findings: list[Finding] = []
    for code, sql in _CHECKS:
        try:
            rows = (await connection.execute(text(f"{sql} LIMIT {FINDINGS_PER_CHECK_MAX}"))).all()
        except Exception as error:  # verify reports; it never raises
            findings.append(Finding(code="verify_failed", message=f"check {code} could not run: {error}"))
            break
        findings.extend(
            Finding(code=code, message=message, entry_id=entry_id, account=account, currency=currency)
            for entry_id, account, currency, message in rows
        )
    return findings


# ---------------------------------------------------------------------------------------------
# Convenience: one transaction per call


class Ledger:
    """The functions above on an engine, each call in its own transaction."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def open_accounts(self, specs: Sequence[AccountSpec]) -> None:
        async with self.engine.begin() as connection:
            await open_accounts(connection, specs)

    async def _in_one_statement(
        self, drafts: Sequence[tuple[EntryDraft, str]], accounts: Sequence[AccountSpec]
    ) -> list[PostedEntry]:
        # A single statement outside BEGIN/COMMIT is its own transaction (the deferred balance
        # check runs at its end): one round trip for the whole call.
        async with self.engine.connect() as connection:
            driver = await statement_driver(connection)
            if driver is not None:
                return await _post_drafts(connection, drafts, accounts, driver=driver)
            async with connection.begin():
                return await _post_drafts(connection, drafts, accounts)

    async def post(self, draft: EntryDraft, *, accounts: Sequence[AccountSpec] = ()) -> PostedEntry:
        _check_draft(draft, pending=False)
        return (await self._in_one_statement([(draft, "posted")], accounts))[0]

    async def post_many(
        self, drafts: Sequence[EntryDraft], *, accounts: Sequence[AccountSpec] = ()
    ) -> list[PostedEntry]:
        if not isinstance(drafts, tuple | list) or not 1 <= len(drafts) <= ENTRIES_PER_BATCH_MAX:
            raise InvalidEntry(f"post_many takes 1..{ENTRIES_PER_BATCH_MAX} entries", param="drafts")
        for draft in drafts:
            _check_draft(draft, pending=False)
        return await self._in_one_statement([(draft, "posted") for draft in drafts], accounts)

    async def post_pending(self, draft: EntryDraft, *, accounts: Sequence[AccountSpec] = ()) -> PostedEntry:
        _check_draft(draft, pending=True)
        return (await self._in_one_statement([(draft, "pending")], accounts))[0]

    async def post_pending_final(self, pending_entry_id: int, amount: int | None, idempotency_key: str) -> PostedEntry:
        async with self.engine.begin() as connection:
            return await post_pending_final(connection, pending_entry_id, amount, idempotency_key)

    async def void_pending(self, pending_entry_id: int, idempotency_key: str) -> PostedEntry:
        async with self.engine.begin() as connection:
            return await void_pending(connection, pending_entry_id, idempotency_key)

    async def reverse(self, entry_id: int, reason: str, idempotency_key: str) -> PostedEntry:
        async with self.engine.begin() as connection:
            return await reverse(connection, entry_id, reason, idempotency_key)

    async def get_entry(self, entry_id: int) -> PostedEntry:
        async with self.engine.connect() as connection:
            return await get_entry(connection, entry_id)

    async def balance(self, account: str, as_of: datetime | None = None) -> Balance:
        async with self.engine.connect() as connection:
            return await balance(connection, account, as_of)

    async def entries(self, account: str, *, limit: int = 50, starting_after: int | None = None) -> list[PostedEntry]:
        async with self.engine.connect() as connection:
            return await entries(connection, account, limit=limit, starting_after=starting_after)

    async def entries_by_metadata(self, key: str, value: str) -> list[PostedEntry]:
        async with self.engine.connect() as connection:
            return await entries_by_metadata(connection, key, value)

    async def list_accounts(self, *, limit: int = 50, starting_after: str | None = None) -> list[Balance]:
        async with self.engine.connect() as connection:
            return await list_accounts(connection, limit=limit, starting_after=starting_after)

    async def verify(self) -> list[Finding]:
        async with self.engine.connect() as connection:
            return await verify(connection)


__all__ = [
    "Ledger",
    "balance",
    "entries",
    "entries_by_metadata",
    "get_entry",
    "list_accounts",
    "open_accounts",
    "post",
    "post_many",
    "post_pending",
    "post_pending_final",
    "reverse",
    "verify",
    "void_pending",
]
