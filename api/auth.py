"""API keys: when `CASCADE_API_KEY_HASHES` lists any, every /v1 route needs
`Authorization: Bearer <key>`; the key's id (a prefix of its hash, never the key) owns the jobs
it makes, and each request counts against the key's rate limit."""

from __future__ import annotations

import hashlib
import hmac
from typing import Annotated

from fastapi import Depends, HTTPException, Request

from api.deps import RedisDep, SettingsDep
from jobs.quotas import KeyQuotas, storage_uri
from jobs.settings import Settings


def key_hashes(settings: Settings) -> set[str]:
    return {value.strip().lower() for value in settings.api_key_hashes.split(",") if value.strip()}


def key_quotas(request: Request, settings: Settings, connection: object) -> KeyQuotas:
    """One rate limiter per app (its Redis storage keeps its own connection)."""
    state = request.app.state
    if getattr(state, "key_quotas", None) is None:
        socket = connection.connection_pool.connection_kwargs.get("path")  # type: ignore[attr-defined]
        state.key_quotas = KeyQuotas(connection, settings, storage_uri(settings, socket))  # type: ignore[arg-type]
    return state.key_quotas


def authenticate(request: Request, settings: SettingsDep, connection: RedisDep) -> str:
    """The caller's key id ("" when the service has no keys); 401 without a valid key."""
    hashes = key_hashes(settings)
    if not hashes:
        return ""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise HTTPException(
            401,
            "this service needs an API key: send 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": "Bearer"},
        )
    digest = hashlib.sha256(token.strip().encode()).hexdigest()
    if not any(hmac.compare_digest(digest, known) for known in hashes):
        raise HTTPException(401, "unknown API key", headers={"WWW-Authenticate": "Bearer"})
    owner = digest[:16]
    key_quotas(request, settings, connection).hit(owner)
    return owner


Owner = Annotated[str, Depends(authenticate)]
