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


def test_a_job_needing_a_stage_no_worker_serves_waits_and_says_so(redis_server, tmp_path) -> None:
    """Accepted (an autoscaler starts workers from the queue), with `waiting` naming the stage
    and no ETA, until a worker for it is live; then the job says nothing of the kind."""
    connection = redis_server.client()
    settings = Settings(redis_url=redis_server.url, store=str(tmp_path), min_free_mb=0)
    worker = Worker([stage_queue(connection, "base64")], connection=connection, name="w-base")
    worker.register_birth()
    worker.heartbeat()
    with TestClient(create_app(settings)) as client:
        accepted = client.post("/v1/generations", json={"class_id": 1, "size": 256})
        assert accepted.status_code == 202, accepted.text
        waiting = "waiting for a worker for sr256: no live worker serves it now"
        assert accepted.json()["waiting"] == waiting
        job_id = accepted.json()["id"]
        view = client.get(f"/v1/jobs/{job_id}").json()
        assert view["waiting"] == waiting and view["eta_seconds"] is None
        listed = client.get("/v1/jobs").json()["jobs"]
        assert [job["waiting"] for job in listed if job["id"] == job_id] == [waiting]
        small = client.post("/v1/generations", json={"class_id": 1, "size": 64}).json()
        assert small["waiting"] is None  # base64 alone: its worker is live
        assert client.get(f"/v1/jobs/{small['id']}").json()["waiting"] is None
        sr256 = Worker([stage_queue(connection, "sr256")], connection=connection, name="w-sr")
        sr256.register_birth()
        sr256.heartbeat()
        assert client.get(f"/v1/jobs/{job_id}").json()["waiting"] is None
        sr256.register_death()
        assert client.get(f"/v1/jobs/{job_id}").json()["waiting"] == waiting
        client.delete(f"/v1/jobs/{job_id}")
        assert client.get(f"/v1/jobs/{job_id}").json()["waiting"] is None  # ended: no wait
    worker.register_death()
