"""API keys: when `CASCADE_API_KEY_HASHES` lists any, every /v1 route needs
`Authorization: Bearer <key>`; the key's id (a prefix of its hash, never the key) owns the jobs
it makes, and each request counts against the key's rate limit. Failed authentications count
against the client address's `CASCADE_AUTH_FAILURE_LIMIT`, so keys cannot be guessed quickly."""

from __future__ import annotations

import hashlib
import hmac
import math
import time
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from limits import parse

from api.deps import RedisDep, SettingsDep
from jobs.quotas import KeyQuotas, QuotaExceeded, storage_uri
from jobs.settings import Settings

FAILURES = "cascade-auth-failures"  # the limiter's namespace for failed authentications


def key_hashes(settings: Settings) -> set[str]:
    return {value.strip().lower() for value in settings.api_key_hashes.split(",") if value.strip()}


def key_quotas(request: Request, settings: Settings, connection: object) -> KeyQuotas:
    """One rate limiter per app (its Redis storage keeps its own connection)."""
    state = request.app.state
    if getattr(state, "key_quotas", None) is None:
        socket = connection.connection_pool.connection_kwargs.get("path")  # type: ignore[attr-defined]
        state.key_quotas = KeyQuotas(connection, settings, storage_uri(settings, socket))  # type: ignore[arg-type]
    return state.key_quotas


def refuse_guessing(quotas: KeyQuotas, settings: Settings, address: str) -> None:
    """429 while `address` is past its failed-authentication limit: checked before the key
    is, or a guesser could tell a right key (its answer not a 429) at full speed."""
    limit = parse(settings.auth_failure_limit)
    if quotas.limiter.test(limit, FAILURES, address):
        return
    reset, _ = quotas.limiter.get_window_stats(limit, FAILURES, address)
    raise QuotaExceeded(
        429,
        f"too many failed authentications from this address ({settings.auth_failure_limit}); "
        "wait, then send a valid 'Authorization: Bearer <key>'",
        retry_after=max(1, math.ceil(reset - time.time())),
    )


def count_failure(quotas: KeyQuotas, settings: Settings, address: str) -> None:
    quotas.limiter.hit(parse(settings.auth_failure_limit), FAILURES, address)


def authenticate(request: Request, settings: SettingsDep, connection: RedisDep) -> str:
    """The caller's key id ("" when the service has no keys); 401 without a valid key, 429
    after too many of those from one address."""
    hashes = key_hashes(settings)
    if not hashes:
        return ""
    quotas = key_quotas(request, settings, connection)
    address = request.client.host if request.client else "unknown"
    refuse_guessing(quotas, settings, address)
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        count_failure(quotas, settings, address)
        raise HTTPException(
            401,
            "this service needs an API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    digest = hashlib.sha256(token.strip().encode()).hexdigest()
    if not any(hmac.compare_digest(digest, known) for known in hashes):
        count_failure(quotas, settings, address)
        raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    owner = digest[:16]
    quotas.hit(owner)
    return owner


Owner = Annotated[str, Depends(authenticate)]
