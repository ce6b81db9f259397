"""CASCADE_PUBLIC_URL: the links of job views, events and webhooks absolute under it; with an
S3 store (moto's server over HTTP) and CASCADE_PRESIGN_RESULTS, `result_url` a presigned URL
that fetches the result from the bucket without the API."""

from __future__ import annotations

import warnings
from collections.abc import Iterator

import httpx
import pytest
from conftest import S3Server
from pydantic import ValidationError

from api.main import create_app
from jobs.connection import EmbeddedRedis
from jobs.events import EventLog
from jobs.lifecycle import Jobs
from jobs.settings import Settings
from jobs.store import RESULT, object_name, open_store

with warnings.catch_warnings():  # starlette nudges towards httpx2, which is not installed here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

PUBLIC = "https://cascade.example.com"
PNG = b"\x89PNG\r\n\x1a\n" + b"not really an image, but bytes the store keeps" * 4


def run_like_a_worker(settings: Settings, connection, job_id: str) -> None:
    """What a worker writes: its Jobs built from the same settings, the result stored."""
    jobs = Jobs(connection, settings.result_ttl, settings=settings, store=open_store(settings))
    jobs.stage_started(job_id, "base64", {"model": "tiny"}, "worker-1")
    jobs.progress([job_id], "base64", 1, 1)
    jobs.store.put(object_name(job_id, RESULT), PNG, "image/png")
    jobs.stage_ended(job_id, "base64", "succeeded")
    jobs.end(job_id, "succeeded")


@pytest.fixture(scope="module")
def public(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        store=str(tmp_path_factory.mktemp("store")),
        public_url=f"{PUBLIC}/",  # the trailing slash is dropped
        presign_results=True,  # a local store has nothing to presign: result_url is the API's
    )


@pytest.fixture(scope="module")
def client(public: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(public)) as client:
        yield client


def test_public_url_must_be_an_http_url():
    assert Settings(public_url="http://10.0.0.5:8000/").public_url == "http://10.0.0.5:8000"
    for bad in ("cascade.example.com", "ftp://host", "https://host/?a=1", "https://host/#x"):
        with pytest.raises(ValidationError, match="public_url must be an http"):
            Settings(public_url=bad)


def test_links_are_absolute_everywhere(
    client: TestClient, public: Settings, redis_server: EmbeddedRedis
):
    response = client.post("/v1/generations", json={"class_id": 1, "size": 64})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    base = f"{PUBLIC}/v1/jobs/{job_id}"
    assert response.headers["location"] == base
    assert response.json()["links"] == {
        "self": base,
        "result": f"{base}/result",
        "stages": {"base64": f"{base}/stages/base64"},
        "cancel": base,
        "events": f"{base}/events",
    }
    connection = redis_server.client()
    run_like_a_worker(public, connection, job_id)
    view = client.get(f"/v1/jobs/{job_id}").json()
    assert view["links"] == response.json()["links"]
    assert view["result"] == view["result_url"] == f"{base}/result"
    assert view["stages"][0]["preview"] == f"{base}/stages/base64"
    assert client.get(f"/v1/jobs/{job_id}/result").content == PNG  # the route is unchanged
    events = {event.type: event.data for event in EventLog(connection, 60).read(job_id)}
    assert events["stage_finished"]["preview"] == f"{base}/stages/base64"
    # The terminal event's data is what the webhook sender posts (jobs.webhooks._post).
    assert EventLog(connection, 60).last(job_id).data == view | {"eta_seconds": 0.0}
    listed = client.get("/v1/jobs").json()["jobs"]
    assert [job["links"]["self"] for job in listed if job["id"] == job_id] == [base]


def test_without_it_links_are_paths(redis_server: EmbeddedRedis, tmp_path):
    settings = Settings(redis_url=redis_server.url, store=str(tmp_path))
    with TestClient(create_app(settings)) as client:
        accepted = client.post("/v1/generations", json={"class_id": 1, "size": 64}).json()
        run_like_a_worker(settings, redis_server.client(), accepted["id"])
        view = client.get(f"/v1/jobs/{accepted['id']}").json()
    assert accepted["links"]["self"] == f"/v1/jobs/{accepted['id']}"
    assert view["result_url"] == view["result"] == f"/v1/jobs/{accepted['id']}/result"


def test_a_presigned_result_url_fetches_from_the_bucket(
    redis_server: EmbeddedRedis, s3_server: S3Server
):
    settings = s3_server.settings(
        "presigned",
        redis_url=redis_server.url,
        s3_create_bucket=True,
        public_url=PUBLIC,
        presign_results=True,
        presign_seconds=600,
    )
    store = open_store(settings)
    store.client.create_bucket(Bucket="presigned")  # type: ignore[attr-defined]
    with TestClient(create_app(settings)) as client:
        job_id = client.post("/v1/generations", json={"class_id": 1, "size": 64}).json()["id"]
        assert client.get(f"/v1/jobs/{job_id}").json()["result_url"] is None  # not yet
        run_like_a_worker(settings, redis_server.client(), job_id)
        view = client.get(f"/v1/jobs/{job_id}").json()
    url = view["result_url"]
    assert url.startswith(f"{s3_server.url}/presigned/results/{job_id}/")
    assert "X-Amz-Signature=" in url and "X-Amz-Expires=600" in url
    assert view["result"] == view["links"]["result"] == f"{PUBLIC}/v1/jobs/{job_id}/result"
    fetched = httpx.get(url)  # no credentials: the signature is the permission
    assert fetched.status_code == 200 and fetched.content == PNG
    anonymous = httpx.get(url.split("?")[0])
    assert anonymous.status_code == 403, anonymous.text  # the bucket is private
    webhook_body = EventLog(redis_server.client(), 60).last(job_id).data
    assert webhook_body["result_url"].startswith(f"{s3_server.url}/presigned/")
