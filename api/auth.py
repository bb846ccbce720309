"""Authentication: `Authorization: Bearer <key>`, checked against hashed keys (penny.keys).

Missing, unknown or revoked key → 401 `authentication_error`; a key whose role may not call
the endpoint → 403 `permission_error` (`insufficient_role`). Payment writes need `merchant`;
reads accept `merchant` or `ops`; ledger-wide reads and the review queue need `ops`. Every
`/v1` route declares one of `MerchantKey`, `ReaderKey`, `OpsKey` (tests/test_api_keys_ops.py
calls each route with each role).

Each authentication records the key's use (`api_keys.last_used_at`), at most once per
LAST_USED_RESOLUTION_SECONDS per key: this process skips keys it recorded within that interval,
and the conditional UPDATE skips keys another process did.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from api.errors import ApiError
from penny.keys import LAST_USED_RESOLUTION_SECONDS, ApiKey, find_api_key, record_api_key_use

logger = logging.getLogger("penny.api")

bearer = HTTPBearer(auto_error=False, description="An API key from `penny keys create --role merchant|ops`.")

_CHALLENGE = {"WWW-Authenticate": "Bearer"}
RECENTLY_USED_KEYS_MAX = 10_000  # keys remembered per process; forgetting one costs one no-op UPDATE


class KeyUseRecorder:
    """Records API key use in `api_keys.last_used_at`, at most once per interval per key.

    Best effort, by design: the record is bookkeeping for operators (`penny keys list`), so a
    failure to write it (a lock timeout, a database without the column yet) is logged and the
    authenticated request goes on.
    """

    def __init__(self, interval_seconds: float = LAST_USED_RESOLUTION_SECONDS) -> None:
        self.interval_seconds = interval_seconds
        self._recorded_at: dict[str, float] = {}  # key id -> time.monotonic() of the last attempt

    async def record(self, engine: AsyncEngine, key_id: str) -> None:
        now = time.monotonic()
        last = self._recorded_at.get(key_id)
        if last is not None and now - last < self.interval_seconds:
            return
        if len(self._recorded_at) >= RECENTLY_USED_KEYS_MAX:
            self._recorded_at.clear()
        # Noted before the write, so concurrent requests with this key do not all write.
        self._recorded_at[key_id] = now
        try:
            async with engine.begin() as connection:
                await record_api_key_use(connection, key_id)
        except SQLAlchemyError as error:
            logger.warning("could not record the use of API key %s: %s", key_id, type(error).__name__)


async def authenticate(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)]
) -> ApiKey:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(
            401,
            "authentication_error",
            "api_key_missing",
            "No API key provided: send `Authorization: Bearer <key>`.",
            headers=_CHALLENGE,
        )
    async with request.app.state.engine.connect() as connection:
        api_key = await find_api_key(connection, request.app.state.settings.api_key_pepper, credentials.credentials)
    if api_key is None:
        raise ApiError(401, "authentication_error", "api_key_invalid", "Invalid API key provided.", headers=_CHALLENGE)
    recorder: KeyUseRecorder | None = getattr(request.app.state, "key_use", None)
    if recorder is not None:
        await recorder.record(request.app.state.engine, api_key.id)
    return api_key


def require_role(*roles: str) -> Callable[..., Awaitable[ApiKey]]:
    async def _check(api_key: Annotated[ApiKey, Depends(authenticate)]) -> ApiKey:
        if api_key.role not in roles:
            raise ApiError(
                403,
                "permission_error",
                "insufficient_role",
                f"A {api_key.role} key may not call this endpoint; it needs a {' or '.join(roles)} key.",
            )
        return api_key

    return _check


MerchantKey = Annotated[ApiKey, Depends(require_role("merchant"))]
ReaderKey = Annotated[ApiKey, Depends(require_role("merchant", "ops"))]
OpsKey = Annotated[ApiKey, Depends(require_role("ops"))]
