"""Every response carries an X-Request-ID that the logs carry too, errors included; a 500
tells the client only the id, never the exception's text."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.main import create_app
from jobs.connection import EmbeddedRedis
from jobs.settings import Settings
from workers import runtime as runtime_module
from workers.runtime import Runtime
from workers.stage import run_stage

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def client(
    redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    store = str(tmp_path_factory.mktemp("store"))
    app = create_app(Settings(redis_url=redis_server.url, store=store))

    def boom() -> None:
        raise RuntimeError("secret detail in /srv/cascade/private/path.py")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/healthz", {}, 200),
        ("GET", "/v1/jobs/nope", {}, 404),
        ("POST", "/v1/generations", {"json": {"class_id": -1}}, 422),
        (
            "POST",
            "/v1/generations",
            {"content": b"x" * 100_000, "headers": {"content-type": "application/json"}},
            413,
        ),
        ("GET", "/boom", {}, 500),
    ],
)
def test_every_response_has_a_request_id_the_logs_carry(
    client: TestClient, caplog: pytest.LogCaptureFixture, method, path, kwargs, status
):
    with caplog.at_level(logging.INFO):
        response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    request_id = response.headers["x-request-id"]
    assert len(request_id) == 32
    ours = [
        record for record in caplog.records if getattr(record, "request_id", None) == request_id
    ]
    assert any(
        record.name == "api.access" and str(status) in record.getMessage() for record in ours
    )


def test_a_500_says_only_the_request_id(client: TestClient, caplog: pytest.LogCaptureFixture):
    with caplog.at_level(logging.INFO):
        response = client.get("/boom")
    request_id = response.headers["x-request-id"]
    assert response.json()["error"] == (
        f"internal error; the service logged the details under request id {request_id}"
    )
    assert "secret" not in response.text and "/srv" not in response.text
    logged = [record for record in caplog.records if record.exc_info]
    assert logged and logged[0].request_id == request_id


def test_a_sane_client_id_is_kept_and_others_replaced(client: TestClient):
    assert (
        client.get("/healthz", headers={"X-Request-ID": "abc-123"}).headers["x-request-id"]
        == "abc-123"
    )
    replaced = client.get("/healthz", headers={"X-Request-ID": "bad id\x7f" + "x" * 200})
    assert (
        replaced.headers["x-request-id"] != "bad id" and len(replaced.headers["x-request-id"]) == 32
    )


def test_path_of_this_file_is_not_in_errors(client: TestClient):
    response = client.post("/v1/upscales", files={"file": ("a.png", b"nope")}, data={"scale": "4"})
    assert response.status_code == 422
    assert str(Path(__file__).parents[2]) not in response.text


def test_the_workers_logs_carry_the_request_id_of_the_post(
    client: TestClient,
    redis_server: EmbeddedRedis,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
):
    response = client.post(
        "/v1/generations",
        json={"class_id": 1, "size": 64, "steps": 2},
        headers={"X-Request-ID": "req-worker-42"},
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    tiny = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}
    settings = Settings(redis_url=redis_server.url, store=str(tmp_path), **tiny)
    runtime = Runtime(settings, redis_server.client())
    runtime_module.install(runtime)
    try:
        with caplog.at_level(logging.INFO, logger="workers.stage"):
            run_stage(job_id, "base64")
    finally:
        runtime_module.install(None)  # type: ignore[arg-type]
    assert runtime.jobs.get(job_id).status == "succeeded"
    lines = [record.getMessage() for record in caplog.records if record.name == "workers.stage"]
    ours = f"job {job_id} (request req-worker-42): stage base64"
    started = [line.split(" (attempt")[0] for line in lines if "started" in line]
    assert started == [f"{ours} started"]
    assert [line for line in lines if line.startswith(f"{ours} finished in ")]
