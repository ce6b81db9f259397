"""Priority and fair share with a real `cascade worker`: jobs queued through the API by three
API keys, then taken by one worker in turn order, a high-priority one first."""

from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import pytest
from conftest import start_worker, wait_for

from api.main import create_app
from jobs.connection import EmbeddedRedis
from jobs.lifecycle import Jobs
from jobs.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.service

TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}
KEYS = {"a": "key-of-a-fair", "b": "key-of-b-fair", "c": "key-of-c-fair"}


def test_one_worker_takes_the_keys_jobs_in_turns_and_high_priority_first(tmp_path: Path):
    redis = EmbeddedRedis(tmp_path / "redis" / "fair.rdb")
    hashes = ",".join(hashlib.sha256(key.encode()).hexdigest() for key in KEYS.values())
    settings = Settings(
        redis_url=redis.url,
        store=str(tmp_path / "store"),
        api_key_hashes=hashes,
        max_batch=1,  # one job at a time: the order it takes them is the order they run
        torch_threads=1,
        **TINY,
    )
    worker = None
    try:
        with TestClient(create_app(settings)) as client:
            names = {}
            for name, priority in [
                ("A1", "normal"),
                ("A2", "normal"),
                ("B1", "normal"),
                ("C1", "normal"),
                ("C2", "normal"),
                ("A3", "normal"),
                ("A-high", "high"),
            ]:
                body = {"class_id": 1, "size": 64, "steps": 2, "priority": priority}
                headers = {"Authorization": f"Bearer {KEYS[name[0].lower()]}"}
                made = client.post("/v1/generations", json=body, headers=headers)
                assert made.status_code == 202, made.text
                names[made.json()["id"]] = name
            refused = client.post(
                "/v1/generations",
                json={"class_id": 1, "size": 64, "priority": "urgent"},
                headers={"Authorization": f"Bearer {KEYS['a']}"},
            )
            assert refused.status_code == 422 and "priority" in refused.text
        jobs = Jobs(redis.client(), 600)
        worker = start_worker(settings, tmp_path / "worker.log")
        wait_for(
            lambda: all(jobs.get(job_id).status == "succeeded" for job_id in names),
            120,
            "the jobs to succeed",
        )
        started = sorted(
            names, key=lambda job_id: float(jobs.get(job_id).stage("base64", "started_at"))
        )
        assert [names[job_id] for job_id in started] == [
            "A-high",
            "A1",
            "B1",
            "C1",
            "A2",
            "C2",
            "A3",
        ]
    finally:
        if worker is not None:
            worker.terminate()
            worker.wait(30)
        redis.stop()
