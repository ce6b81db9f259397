"""/readyz for partial deployments: ready when the served stages have live workers (the
`served_stages` setting, else every stage a worker has ever served, else all)."""

from __future__ import annotations

import warnings

import pytest
from pydantic import ValidationError
from rq import Worker

from api.main import create_app
from jobs.health import SERVED_KEY, remember_served
from jobs.queues import stage_queue
from jobs.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def readiness(settings: Settings) -> tuple[int, dict]:
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    return response.status_code, response.json()


def test_an_upscale_only_deployment_is_ready(redis_server, tmp_path) -> None:
    connection = redis_server.client()
    connection.delete(SERVED_KEY)
    settings = Settings(redis_url=redis_server.url, store=str(tmp_path), min_free_mb=0)
    status, body = readiness(settings)  # no worker has ever started: every stage is required
    assert status == 503 and "base64, sr256, sr1024" in body["error"]
    worker = Worker([stage_queue(connection, "sr256")], connection=connection, name="w-ready")
    worker.register_birth()
    worker.heartbeat()
    remember_served(connection, ["sr256"])  # what `cascade worker --stages sr256` does
    status, body = readiness(settings)
    assert status == 200, body
    assert body["served"] == ["sr256"] and body["workers"]["base64"] == 0
    status, body = readiness(settings.model_copy(update={"served_stages": "sr256,sr1024"}))
    assert status == 503 and "no worker is serving stage(s) sr1024" in body["error"]
    worker.register_death()


def test_served_stages_must_name_stages() -> None:
    with pytest.raises(ValidationError, match="unknown stage"):
        Settings(served_stages="sr256,sr512")
