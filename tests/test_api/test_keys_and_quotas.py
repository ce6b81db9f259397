"""API keys (stored hashed), ownership, per-key rate limit and queued-job cap, the global
queue cap and the cost cap, against a real (embedded) Redis."""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterator

import pytest

from api.main import create_app
from jobs.connection import EmbeddedRedis
from jobs.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ALICE, BOB = "alice-secret-key", "bob-secret-key"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis") / "keys.rdb")
    yield server
    server.stop()


def app_client(redis: EmbeddedRedis, tmp_path, **settings: object) -> TestClient:
    redis.client().flushdb()
    hashes = ",".join(hashlib.sha256(key.encode()).hexdigest() for key in (ALICE, BOB))
    config = Settings(redis_url=redis.url, store=str(tmp_path), api_key_hashes=hashes, **settings)
    return TestClient(create_app(config))


def test_keys_guard_every_v1_route_and_own_jobs(redis, tmp_path):
    with app_client(redis, tmp_path) as client:
        body = {"class_id": 1, "size": 64}
        for method, path in (
            ("POST", "/v1/generations"),
            ("GET", "/v1/classes"),
            ("GET", "/v1/limits"),
            ("GET", "/v1/jobs/x"),
        ):
            response = client.request(method, path, json=body if method == "POST" else None)
            assert response.status_code == 401, (path, response.text)
            assert response.headers["www-authenticate"] == "Bearer"
        wrong = client.post("/v1/generations", json=body, headers=bearer("not-a-key"))
        assert wrong.status_code == 401 and "unknown API key" in wrong.json()["error"]
        assert client.get("/healthz").status_code == 200  # not a /v1 route
        made = client.post("/v1/generations", json=body, headers=bearer(ALICE))
        assert made.status_code == 202, made.text
        job_id = made.json()["id"]
        assert client.get(f"/v1/jobs/{job_id}", headers=bearer(ALICE)).status_code == 200
        # Another key cannot see, follow or cancel it: it does not exist for them.
        for method, path in (
            ("GET", f"/v1/jobs/{job_id}"),
            ("DELETE", f"/v1/jobs/{job_id}"),
            ("GET", f"/v1/jobs/{job_id}/events"),
            ("GET", f"/v1/jobs/{job_id}/result"),
        ):
            response = client.request(method, path, headers=bearer(BOB))
            assert response.status_code == 404, (path, response.text)
        assert client.delete(f"/v1/jobs/{job_id}", headers=bearer(ALICE)).status_code == 202
        # Keys are stored hashed: the key itself is nowhere in Redis.
        dump = b"".join(key + (redis.client().dump(key) or b"") for key in redis.client().keys())
        assert ALICE.encode() not in dump


def test_per_key_rate_limit_answers_429_with_retry_after(redis, tmp_path):
    with app_client(redis, tmp_path, rate_limit="3/minute") as client:
        answers = [client.get("/v1/limits", headers=bearer(ALICE)) for _ in range(4)]
        assert [answer.status_code for answer in answers] == [200, 200, 200, 429]
        assert 0 < int(answers[-1].headers["retry-after"]) <= 60
        assert "rate limit" in answers[-1].json()["error"]
        assert client.get("/v1/limits", headers=bearer(BOB)).status_code == 200  # per key


def test_queued_jobs_per_key_answer_429(redis, tmp_path):
    with app_client(redis, tmp_path, max_queued_per_key=2) as client:
        body = {"class_id": 1, "size": 64}
        codes = [client.post("/v1/generations", json=body, headers=bearer(ALICE)) for _ in range(3)]
        assert [code.status_code for code in codes] == [202, 202, 429]
        assert codes[-1].headers["retry-after"] and "2 jobs" in codes[-1].json()["error"]
        assert client.post("/v1/generations", json=body, headers=bearer(BOB)).status_code == 202
        # A job that ends frees its place.
        client.delete(f"/v1/jobs/{codes[0].json()['id']}", headers=bearer(ALICE))
        again = client.post("/v1/generations", json=body, headers=bearer(ALICE))
        assert again.status_code == 202, again.text


def test_global_queue_cap_answers_503(redis, tmp_path):
    with app_client(redis, tmp_path, max_queue_depth=2, max_queued_per_key=100) as client:
        body = {"class_id": 1, "size": 64}
        codes = [client.post("/v1/generations", json=body, headers=bearer(ALICE)) for _ in range(3)]
        assert [code.status_code for code in codes] == [202, 202, 503]
        assert codes[-1].headers["retry-after"] == "30"
        assert "base64 has 2 jobs waiting" in codes[-1].json()["error"]


def test_cost_cap_answers_422(redis, tmp_path):
    with app_client(redis, tmp_path) as client:
        body = {"class_id": 1, "size": 1024, "steps": 1000}
        response = client.post("/v1/generations", json=body, headers=bearer(ALICE))
        assert response.status_code == 422
        assert "costs" in response.json()["error"] and "limit" in response.json()["error"]
