"""GET /v1/jobs against a real (embedded) Redis: newest first, paged by cursor, filtered by
status, each API key seeing only its own jobs; bad parameters answer 422."""

from __future__ import annotations

import hashlib
import warnings

from api.main import create_app
from jobs.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

ALICE, BOB = "alice-list-key", "bob-list-key"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def client_for(redis_server, tmp_path, keys: tuple[str, ...] = ()) -> TestClient:
    redis_server.client().flushdb()
    hashes = ",".join(hashlib.sha256(key.encode()).hexdigest() for key in keys)
    settings = Settings(redis_url=redis_server.url, store=str(tmp_path), api_key_hashes=hashes)
    return TestClient(create_app(settings))


def submit(client: TestClient, class_id: int, key: str | None = None) -> str:
    headers = bearer(key) if key else {}
    made = client.post("/v1/generations", json={"class_id": class_id, "size": 64}, headers=headers)
    assert made.status_code == 202, made.text
    return made.json()["id"]


def test_newest_first_in_pages_and_filtered_by_status(redis_server, tmp_path):
    with client_for(redis_server, tmp_path) as client:
        made = [submit(client, index % 3) for index in range(5)]
        assert client.delete(f"/v1/jobs/{made[1]}").status_code == 202
        assert client.delete(f"/v1/jobs/{made[3]}").status_code == 202

        everything = client.get("/v1/jobs")
        assert everything.status_code == 200, everything.text
        body = everything.json()
        assert [job["id"] for job in body["jobs"]] == made[::-1]
        assert body["next_cursor"] is None
        assert body["jobs"][0]["request"]["class_id"] == 4 % 3  # full job views

        seen, cursor, pages = [], None, 0
        while True:
            params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
            answer = client.get("/v1/jobs", params=params).json()
            assert len(answer["jobs"]) <= 2
            seen += [job["id"] for job in answer["jobs"]]
            pages += 1
            cursor = answer["next_cursor"]
            if cursor is None:
                break
        assert seen == made[::-1] and pages == 3

        canceled = client.get("/v1/jobs", params={"status": "canceled"}).json()
        assert [job["id"] for job in canceled["jobs"]] == [made[3], made[1]]
        assert {job["status"] for job in canceled["jobs"]} == {"canceled"}
        first = client.get("/v1/jobs", params={"status": "queued", "limit": 1}).json()
        assert [job["id"] for job in first["jobs"]] == [made[4]]
        rest = client.get(
            "/v1/jobs", params={"status": "queued", "cursor": first["next_cursor"]}
        ).json()
        assert [job["id"] for job in rest["jobs"]] == [made[2], made[0]]


def test_a_key_lists_only_its_own_jobs(redis_server, tmp_path):
    with client_for(redis_server, tmp_path, (ALICE, BOB)) as client:
        alice = [submit(client, 1, ALICE), submit(client, 2, ALICE)]
        bob = [submit(client, 3, BOB)]
        assert client.get("/v1/jobs").status_code == 401
        listed = client.get("/v1/jobs", headers=bearer(ALICE)).json()
        assert [job["id"] for job in listed["jobs"]] == alice[::-1]
        listed = client.get("/v1/jobs", headers=bearer(BOB)).json()
        assert [job["id"] for job in listed["jobs"]] == bob


def test_bad_parameters_answer_422_saying_what_is_allowed(redis_server, tmp_path):
    with client_for(redis_server, tmp_path) as client:
        submit(client, 1)
        for params, expected in (
            ({"limit": 0}, "limit"),
            ({"limit": 101}, "100"),
            ({"limit": "many"}, "limit"),
            ({"status": "done"}, "'queued'"),
            ({"cursor": "not-a-cursor"}, "cursor"),
        ):
            answer = client.get("/v1/jobs", params=params)
            assert answer.status_code == 422, (params, answer.text)
            assert expected in answer.json()["error"], (params, answer.json()["error"])
