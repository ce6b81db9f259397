"""Idempotency-Key: the same key returns the same job; the API SIGKILLed mid-burst and every
client retrying with its key leaves exactly one job per key (a real uvicorn, a real Redis)."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import free_port, wait_listening
from PIL import Image

from api.main import create_app
from jobs.connection import EmbeddedRedis
from jobs.queues import stage_queue
from jobs.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis") / "idem.rdb")
    yield server
    server.stop()


@pytest.fixture()
def client(redis: EmbeddedRedis, tmp_path: Path) -> Iterator[TestClient]:
    redis.client().flushdb()
    with TestClient(create_app(Settings(redis_url=redis.url, store=str(tmp_path)))) as client:
        yield client


def test_same_key_same_job(client: TestClient, redis: EmbeddedRedis):
    body = {"class_id": 3, "size": 64}
    first = client.post("/v1/generations", json=body, headers={"Idempotency-Key": "k1"})
    again = client.post("/v1/generations", json=body, headers={"Idempotency-Key": "k1"})
    assert first.status_code == again.status_code == 202, again.text
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["seed"] == again.json()["seed"]  # the drawn seed, not a new one
    assert again.json()["replayed"] is True and first.json()["replayed"] is False
    other = client.post("/v1/generations", json=body, headers={"Idempotency-Key": "k2"})
    plain = client.post("/v1/generations", json=body)
    ids = {first.json()["id"], other.json()["id"], plain.json()["id"]}
    assert len(ids) == 3
    assert len(stage_queue(redis.client(), "base64").job_ids) == 3


def test_same_key_different_request_is_refused(client: TestClient):
    headers = {"Idempotency-Key": "k3"}
    assert client.post("/v1/generations", json={"class_id": 3}, headers=headers).status_code == 202
    response = client.post("/v1/generations", json={"class_id": 4}, headers=headers)
    assert response.status_code == 422
    assert "different request" in response.json()["error"]


def test_uploads_are_idempotent_too(client: TestClient):
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), "red").save(buffer, format="PNG")
    files = {"file": ("a.png", buffer.getvalue(), "image/png")}
    headers = {"Idempotency-Key": "up-1"}
    first = client.post("/v1/upscales", data={"scale": "4"}, files=files, headers=headers)
    again = client.post("/v1/upscales", data={"scale": "4"}, files=files, headers=headers)
    assert first.status_code == 202, first.text
    assert first.json()["id"] == again.json()["id"]


def start_api(port: int, env: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"]
    process = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "warning"], env=env, cwd=REPO
    )
    wait_listening(port, process, 60, "uvicorn")
    return process


def test_api_killed_mid_burst_then_retries_make_no_duplicates(redis: EmbeddedRedis, tmp_path: Path):
    redis.client().flushdb()
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CASCADE_REDIS_URL": redis.url,
        "CASCADE_STORE": str(tmp_path),
    }
    url = f"http://127.0.0.1:{port}/v1/generations"
    keys = [f"burst-{index}" for index in range(40)]

    def post(key: str) -> str | None:
        try:
            response = httpx.post(
                url, json={"class_id": 5, "size": 64}, headers={"Idempotency-Key": key}, timeout=5
            )
        except httpx.TransportError:
            return None  # the connection was lost: the client does not know what happened
        return response.json()["id"] if response.status_code == 202 else None

    api = start_api(port, env)
    try:
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(post, key) for key in keys]
            time.sleep(0.3)  # part of the burst is through
            api.send_signal(signal.SIGKILL)
            first = [future.result() for future in futures]
        api.wait(10)
        assert None in first, "the kill came after the whole burst"
        api = start_api(port, env)
        with ThreadPoolExecutor(8) as pool:
            retried = list(pool.map(post, keys))  # every client retries, answered or not
    finally:
        api.kill()
        api.wait(10)
    assert None not in retried
    assert len(set(retried)) == len(keys)
    assert all(before in (None, after) for before, after in zip(first, retried, strict=True))
    connection = redis.client()
    records = [key for key in connection.scan_iter("cascade:job:*") if key.count(b":") == 2]
    assert len(records) == len(keys)
    assert sorted(stage_queue(connection, "base64").job_ids) == sorted(
        f"{job_id}-base64" for job_id in retried
    )
