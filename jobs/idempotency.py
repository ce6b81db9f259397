"""Idempotency keys: a POST that carries `Idempotency-Key` is bound to the job it made for 24 h,
so a client that lost its connection can send it again and get the same job, not a second one.

The binding is one Redis `SET NX` (the first request wins, atomically, across API processes),
holding the job id and a fingerprint of the request: the same key with a different request is
refused rather than silently answered with another request's job."""

from __future__ import annotations

import hashlib
import json

from redis import Redis

KEY_TTL = 24 * 3600


class IdempotencyConflict(ValueError):
    """The key was used for a different request."""


def fingerprint(*parts: bytes | str) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()


def _redis_key(owner: str, key: str) -> str:
    return f"cascade:idempotency:{fingerprint(owner, key)}"


def bind(connection: Redis, owner: str, key: str, request: str, job_id: str) -> str | None:
    """Bind `key` (per owner) to `job_id`; None when this call bound it, else the job id an
    earlier request with the same key and the same request fingerprint made."""
    redis_key = _redis_key(owner, key)
    value = json.dumps({"job": job_id, "request": request})
    if connection.set(redis_key, value, nx=True, ex=KEY_TTL):
        return None
    raw = connection.get(redis_key)
    if raw is None:  # expired between the two calls: bind again
        return bind(connection, owner, key, request, job_id)
    existing = json.loads(raw)
    if existing.get("request") != request:
        raise IdempotencyConflict(
            "this Idempotency-Key was already used for a different request; use a new key"
        )
    return str(existing["job"])
