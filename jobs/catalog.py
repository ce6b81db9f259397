"""Which model each stage's workers run, as they announce it in Redis when they load it.

The API never loads models, so this is how it can warn, the moment it accepts a request, that a
stage will run random weights.
"""

from __future__ import annotations

import json

from redis import Redis

CATALOG_KEY = "cascade:models"


def announce(connection: Redis, stage: str, description: dict[str, object]) -> None:
    """Record the model a worker loaded for `stage` (the latest announcement wins)."""
    connection.hset(CATALOG_KEY, stage, json.dumps(description))


def announced(connection: Redis) -> dict[str, dict[str, object]]:
    """Stage name -> the last announced model description."""
    return {
        (key.decode() if isinstance(key, bytes) else key): json.loads(value)
        for key, value in connection.hgetall(CATALOG_KEY).items()
    }
