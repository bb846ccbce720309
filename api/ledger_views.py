"""Ledger reads: a payment's entries, every account with its balance, one account's balance.

Account listings and balances are platform-wide books, so they need an `ops` key; a
payment's own entries are readable with a `merchant` key too.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncEngine

from api.auth import OpsKey, ReaderKey
from api.edge import penny_version_header
from api.errors import ERROR_RESPONSES, json_response, resource_missing
from api.models import (
    PAGE_SIZE_DEFAULT,
    PAYMENT_ID_LENGTH_MAX,
    LedgerEntryList,
    LedgerEntryOut,
    PostingOut,
)
from api.pagination import ascending_window, check_exclusive_cursors
from api.payments import existing_payment
from ledger import ledger as books
from ledger.errors import InvalidAccount, UnknownAccount
from ledger.ledger import ACCOUNT_CODE_PATTERN, PAGE_SIZE_MAX
from ledger.models import Balance, PostedEntry

router = APIRouter(prefix="/v1", tags=["ledger"], dependencies=[Depends(penny_version_header)])

ACCOUNT_CODE_LENGTH_MAX = 200


class AccountBalance(BaseModel):
    object: Literal["ledger_account"] = "ledger_account"
    code: str
    type: str
    currency: str
    posted: int
    pending: int
    available: int
    must_not_go_negative: bool


class AccountList(BaseModel):
    object: Literal["list"] = "list"
    url: str
    has_more: bool
    data: list[AccountBalance]


def _engine(request: Request) -> AsyncEngine:
    return request.app.state.engine  # type: ignore[no-any-return]


Engine = Annotated[AsyncEngine, Depends(_engine)]


def _unix(moment: datetime | None) -> int | None:
    return int(moment.timestamp()) if moment is not None else None


def entry_out(entry: PostedEntry) -> LedgerEntryOut:
    return LedgerEntryOut(
        id=entry.id,
        kind=entry.kind,
        status=entry.status,
        description=entry.description,
        postings=[PostingOut(account=p.account, amount=p.amount, currency=p.currency) for p in entry.postings],
        metadata=dict(entry.metadata),
        reverses_entry_id=entry.reverses_entry_id,
        resolves_entry_id=entry.resolves_entry_id,
        resolved_by_entry_id=entry.resolved_by_entry_id,
        effective_at=_unix(entry.effective_at),
        created=_unix(entry.effective_at) or 0,
    )


def balance_out(balance: Balance) -> AccountBalance:
    return AccountBalance(
        code=balance.account,
        type=balance.type,
        currency=balance.currency,
        posted=balance.posted,
        pending=balance.pending,
        available=balance.available,
        must_not_go_negative=balance.must_not_go_negative,
    )


def _dump(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json")


@router.get(
    "/payments/{payment_id}/ledger",
    response_model=LedgerEntryList,
    responses=ERROR_RESPONSES,
    tags=["payments"],
    summary="The payment's ledger entries, oldest first",
)
async def payment_ledger(
    payment_id: Annotated[str, Path(max_length=PAYMENT_ID_LENGTH_MAX, pattern=r"^[A-Za-z0-9_]+$")],
    api_key: ReaderKey,
    engine: Engine,
    limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_MAX,
    starting_after: Annotated[int | None, Query(ge=0, le=2**62, description="A ledger entry id.")] = None,
    ending_before: Annotated[int | None, Query(ge=0, le=2**62, description="A ledger entry id.")] = None,
) -> Response:
    await existing_payment(engine, payment_id)
    page = await payment_ledger_page(engine, payment_id, limit, starting_after, ending_before)
    return json_response(200, _dump(page))


async def payment_ledger_page(
    engine: AsyncEngine, payment_id: str, limit: int, starting_after: int | None, ending_before: int | None
) -> LedgerEntryList:
    """One page of the payment's ledger entries, oldest first (a payment has a handful: they are
    read whole, at most the ledger's ENTRIES_BY_METADATA_MAX, and paged here)."""
    check_exclusive_cursors(starting_after, ending_before)
    async with engine.connect() as connection:
        found = await books.entries_by_metadata(connection, "payment_id", payment_id)
    ids = [entry.id for entry in found]
    start, end, has_more = ascending_window(ids, limit, starting_after, ending_before)
    return LedgerEntryList(
        url=f"/v1/payments/{payment_id}/ledger",
        has_more=has_more,
        data=[entry_out(entry) for entry in found[start:end]],
    )


@router.get(
    "/ledger/accounts",
    response_model=AccountList,
    responses=ERROR_RESPONSES,
    summary="Accounts with their balances, by code",
)
async def list_accounts(
    api_key: OpsKey,
    engine: Engine,
    limit: Annotated[int, Query(ge=1, le=PAGE_SIZE_MAX)] = PAGE_SIZE_DEFAULT,
    starting_after: Annotated[
        str | None,
        Query(
            max_length=ACCOUNT_CODE_LENGTH_MAX,
            pattern=ACCOUNT_CODE_PATTERN.pattern,
            description="An account code: the page after it.",
        ),
    ] = None,
) -> Response:
    async with engine.connect() as connection:
        if limit < PAGE_SIZE_MAX:
            balances = await books.list_accounts(connection, limit=limit + 1, starting_after=starting_after)
            has_more = len(balances) > limit
        else:
            balances = await books.list_accounts(connection, limit=limit, starting_after=starting_after)
            has_more = len(balances) == limit and bool(
                await books.list_accounts(connection, limit=1, starting_after=balances[-1].account)
            )
    page = AccountList(
        url="/v1/ledger/accounts", has_more=has_more, data=[balance_out(balance) for balance in balances[:limit]]
    )
    return json_response(200, _dump(page))


@router.get(
    "/ledger/accounts/{code}",
    response_model=AccountBalance,
    responses=ERROR_RESPONSES,
    summary="One account's posted and pending balance",
)
async def get_account(
    code: Annotated[
        str, Path(max_length=ACCOUNT_CODE_LENGTH_MAX, pattern=ACCOUNT_CODE_PATTERN.pattern, examples=["platform:fees"])
    ],
    api_key: OpsKey,
    engine: Engine,
) -> Response:
    try:
        async with engine.connect() as connection:
            balance = await books.balance(connection, code)
    except (UnknownAccount, InvalidAccount):
        raise resource_missing("ledger account", "code") from None
    return json_response(200, _dump(balance_out(balance)))
