"""Authentication: `Authorization: Bearer <key>`, checked against hashed keys (penny.keys).

Missing or unknown key → 401 `authentication_error`; a key whose role may not call the
endpoint → 403 `permission_error`. Payment writes need `merchant`; reads accept `merchant` or
`ops`; ledger-wide reads need `ops`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import ApiError
from penny.keys import ApiKey, find_api_key

bearer = HTTPBearer(auto_error=False, description="An API key from `penny keys create --role merchant|ops`.")

_CHALLENGE = {"WWW-Authenticate": "Bearer"}


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
