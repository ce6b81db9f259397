"""The HTTP API against a real (embedded) Redis, without workers: validation, errors, job
records, cancel, health, metrics. Every bad input must come back as 4xx JSON saying what was
wrong."""

from __future__ import annotations

import io
import json
import re
import struct
import subprocess
import sys
import warnings
import zlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api.main import create_app
from jobs.connection import EmbeddedRedis
from jobs.queues import stage_queue
from jobs.settings import Settings

with warnings.catch_warnings():  # starlette nudges towards httpx2, which is not installed here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def settings(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        store=str(tmp_path_factory.mktemp("store")),
        max_upload_bytes=200_000,
        max_input_pixels=512 * 512,
        max_output_pixels=1024 * 1024,
        max_steps=500,
    )


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


def image_bytes(width: int, height: int, format: str = "PNG") -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format=format)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but which carries no pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    signature = b"\x89PNG\r\n\x1a\n"
    return (
        signature
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def assert_error(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    for word in words:
        assert word in body["error"], body["error"]
    return body


def test_api_does_not_import_torch():
    code = "import sys, api.main; api.main.create_app(); print('torch' in sys.modules)"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True
    )
    assert result.stdout.strip() == "False"


def test_docs_and_openapi(client: TestClient):
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/generations", "/v1/upscales", "/v1/jobs", "/v1/jobs/{job_id}", "/readyz"):
        assert path in paths
    assert "/docs" not in paths and "/metrics" in paths


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_load_their_scripts_from_the_service(client: TestClient, page: str):
    html = client.get(page)
    assert html.status_code == 200 and "/openapi.json" in html.text
    sources = re.findall(r'(?:src|href)="([^"]+)"', html.text)
    assert sources and all(source.startswith("/") for source in sources), sources
    for source in sources:
        asset = client.get(source)
        assert asset.status_code == 200 and len(asset.content) > 1000, source


def test_classes_and_health(client: TestClient):
    classes = client.get("/v1/classes").json()
    assert len(classes) == 1000 and classes[1] == {"id": 1, "name": "goldfish"}
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_names_stages_without_workers(client: TestClient):
    body = assert_error(client.get("/readyz"), 503, "base64", "sr256", "sr1024")
    assert body["detail"]["workers"] == {"base64": 0, "sr256": 0, "sr1024": 0}


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"class_name": "not a class"}, ["unknown class name"]),
        ({"class_id": 1000}, ["class_id"]),
        ({"class_id": "7"}, ["class_id"]),
        ({}, ["exactly one of class_id"]),
        ({"class_id": 1, "class_name": "goldfish"}, ["exactly one of class_id"]),
        ({"class_id": 1, "size": 128}, ["size"]),
        ({"class_id": 1, "steps": 0}, ["steps"]),
        ({"class_id": 1, "steps": 1001}, ["steps"]),
        ({"class_id": 1, "steps": 501}, ["steps must be between 1 and 500"]),
        ({"class_id": 1, "sampler": "euler"}, ["sampler"]),
        ({"class_id": 1, "seed": -1}, ["seed"]),
        ({"class_id": 1, "seed": 2**64}, ["seed"]),
        ({"class_id": 1, "seed": "abc"}, ["seed"]),
        ({"class_id": 1, "seed": 1.5}, ["seed"]),
        ({"class_id": 1, "guidance": 100}, ["guidance"]),
        ({"class_id": 1, "webhook_url": "ftp://example.com/x"}, ["webhook_url"]),
        ({"class_id": 1, "colour": "red"}, ["unknown field 'colour'"]),
    ],
)
def test_bad_generation_requests(client: TestClient, body: dict, words: list[str]):
    assert_error(client.post("/v1/generations", json=body), 422, *words)


def test_body_that_is_not_json(client: TestClient):
    response = client.post(
        "/v1/generations", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 422, "not valid JSON")


def upscale(client: TestClient, data: bytes, filename: str = "in.png", **fields: object):
    form = {key: str(value) for key, value in fields.items()}
    return client.post("/v1/upscales", data=form, files={"file": (filename, data)})


@pytest.mark.parametrize(
    ("fields", "status", "words"),
    [
        ({"scale": 8}, 422, ["scale must be 4 or 16"]),
        ({"scale": 4, "target_size": 256}, 422, ["scale or target_size"]),
        ({"target_size": 64 * 17}, 422, ["more than 16x"]),
        ({"color_fix": "sepia"}, 422, ["color_fix"]),
        ({"steps": 0}, 422, ["steps"]),
        ({"seed": "x"}, 422, ["seed"]),
        ({"class_id": -3}, 422, ["class_id"]),
        ({"strength": 1}, 422, ["unknown field 'strength'"]),
        ({"fidelity": 1.5}, 422, ["fidelity", "less than or equal to 1"]),
        ({"fidelity": -0.1}, 422, ["fidelity", "greater than or equal to 0"]),
        ({"fidelity": "nan"}, 422, ["fidelity"]),
        ({"low_band": "middle"}, 422, ["low_band", "'estimate' or 'sample'"]),
        ({"scale": 16, "steps": 2}, 413, ["1280x1280", "limit"]),
    ],
)
def test_bad_upscale_fields(client: TestClient, fields: dict, status: int, words: list[str]):
    data = image_bytes(64, 64) if fields.get("scale") != 16 else image_bytes(80, 80)
    assert_error(upscale(client, data, **fields), status, *words)


def test_bad_upscale_files(client: TestClient, settings: Settings):
    assert_error(client.post("/v1/upscales", data={"scale": "4"}), 422, "file")
    assert_error(upscale(client, b"hello, not an image"), 422, "not an image")
    assert_error(upscale(client, b""), 422, "empty")
    assert_error(upscale(client, image_bytes(8, 8, "GIF"), "in.gif"), 415, "GIF", "PNG")
    # Size limits come from the header: this PNG has no pixel data, so decoding would fail.
    assert_error(upscale(client, png_header_only(1000, 1000)), 413, "1000x1000", "limit")
    assert_error(upscale(client, png_header_only(100_000, 100_000)), 413, "decompression bomb")
    assert_error(upscale(client, png_header_only(64, 64)), 422, "corrupt")
    noise = np.random.default_rng(1).integers(0, 255, settings.max_upload_bytes + 1, np.uint8)
    assert_error(upscale(client, noise.tobytes()), 413, "larger than")


def test_declared_body_too_large_is_refused_before_reading(client: TestClient):
    response = client.post(
        "/v1/upscales",
        content=b"x" * 10,
        headers={"content-type": "multipart/form-data; boundary=x", "content-length": "10000000"},
    )
    assert_error(response, 413, "too large")


def test_accepted_generation_is_queued(client: TestClient, settings: Settings, redis_server):
    response = client.post(
        "/v1/generations", json={"class_name": "Goldfish", "size": 1024, "seed": 7, "steps": 2}
    )
    assert response.status_code == 202, response.text
    accepted = response.json()
    assert accepted["status"] == "queued" and accepted["seed"] == 7
    assert accepted["stages"] == ["base64", "sr256", "sr1024"]
    assert response.headers["location"] == accepted["links"]["self"]
    job = client.get(accepted["links"]["self"]).json()
    assert job["status"] == "queued" and job["progress"] == 0.0 and job["stage"] == "base64"
    assert job["request"]["class_id"] == 1 and job["request"]["class_name"] == "goldfish"
    assert [stage["status"] for stage in job["stages"]] == ["queued", "pending", "pending"]
    assert [stage["steps"] for stage in job["stages"]] == [2, 2, 2]
    assert job["output"] == {"height": 1024, "width": 1024}
    queue = stage_queue(redis_server.client(), "base64")
    assert f"{accepted['id']}-base64" in queue.job_ids
    # JSON arguments only: the stage job carries the job id and stage name, nothing pickled.
    raw = redis_server.client().hget(f"rq:job:{accepted['id']}-base64", "data")
    function, _, arguments, _ = json.loads(zlib.decompress(raw))
    assert (function, arguments) == ("workers.stage.run_stage", [accepted["id"], "base64"])


def test_accepted_upscale_plans_from_the_image(client: TestClient):
    response = upscale(client, image_bytes(60, 45, "JPEG"), "in.jpg", target_size=200, seed=3)
    assert response.status_code == 202, response.text
    job = client.get(response.json()["links"]["self"]).json()
    assert job["kind"] == "upscale" and job["request"]["scale"] == 4
    assert job["request"]["color_fix"] == "none"  # residual upscalers keep colour exact
    assert [(s["name"], s["height"], s["width"]) for s in job["stages"]] == [("sr256", 180, 240)]
    assert job["output"] == {"height": 150, "width": 200}
    webp = upscale(client, image_bytes(64, 64, "WEBP"), "in.webp", scale=16, steps=2)
    assert webp.status_code == 202, webp.text  # 64 x 16 = 1024: exactly the output limit
    assert webp.json()["stages"] == ["sr256", "sr1024"]


def test_upscale_fidelity_is_kept_in_the_request(client: TestClient):
    response = upscale(client, image_bytes(64, 64), scale=4, fidelity=1)
    assert response.status_code == 202, response.text
    job = client.get(response.json()["links"]["self"]).json()
    assert job["request"]["fidelity"] == 1.0
    assert "low_band" not in job["request"]  # not asked for: the stage's own default
    asked = upscale(client, image_bytes(64, 64), scale=16, low_band="sample", steps=2)
    assert asked.status_code == 202, asked.text
    job = client.get(asked.json()["links"]["self"]).json()
    assert job["request"]["low_band"] == "sample"


def test_classes_follow_the_loaded_base(client: TestClient, redis_server: EmbeddedRedis):
    from jobs.catalog import CATALOG_KEY, announce

    connection = redis_server.client()
    announce(connection, "base64", {"stage": "base64", "classes": [281, 1]})
    try:
        assert client.get("/v1/classes").json() == [
            {"id": 1, "name": "goldfish"},
            {"id": 281, "name": "tabby"},
        ]
        refused = client.post("/v1/generations", json={"class_name": "tench"})
        assert_error(refused, 422, "not one the loaded base model was trained on", "281 (tabby)")
        accepted = client.post("/v1/generations", json={"class_name": "tabby", "steps": 1})
        assert accepted.status_code == 202, accepted.text
    finally:
        connection.hdel(CATALOG_KEY, "base64")
    assert len(client.get("/v1/classes").json()) == 1000  # no announcement: every class


def submit(client: TestClient, **body: object) -> str:
    response = client.post("/v1/generations", json={"class_id": 3, "size": 256, **body})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def test_job_errors_and_not_ready_images(client: TestClient):
    assert_error(client.get("/v1/jobs/nope"), 404, "no job 'nope'")
    assert_error(client.get("/v1/jobs/nope/result"), 404, "no job")
    assert_error(client.delete("/v1/jobs/nope"), 404, "no job")
    job_id = submit(client)
    assert_error(client.get(f"/v1/jobs/{job_id}/result"), 409, "not ready", "queued")
    assert_error(client.get(f"/v1/jobs/{job_id}/stages/base64"), 409, "base64", "queued")
    assert_error(client.get(f"/v1/jobs/{job_id}/stages/sr1024"), 404, "no stage 'sr1024'")
    assert_error(client.get("/v1/nothing"), 404, "Not Found")


def test_cancel_a_queued_job(client: TestClient, redis_server: EmbeddedRedis):
    job_id = submit(client)
    response = client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["status"] == "canceled" and job["stage"] is None
    assert [stage["status"] for stage in job["stages"]] == ["canceled", "canceled"]
    assert f"{job_id}-base64" not in stage_queue(redis_server.client(), "base64").job_ids
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 200  # idempotent
    assert_error(client.get(f"/v1/jobs/{job_id}/result"), 409, "canceled")


def test_metrics_report_every_stage(client: TestClient):
    text = client.get("/metrics").text
    for stage in ("base64", "sr256", "sr1024"):
        assert f'cascade_queue_depth{{stage="{stage}"}}' in text
        assert f'cascade_stage_failures_total{{stage="{stage}"}}' in text
        assert f'cascade_stage_duration_seconds_count{{stage="{stage}"}}' in text
        assert f'cascade_workers{{stage="{stage}"}} 0.0' in text


def test_redis_down_is_a_503_not_a_crash(tmp_path: Path):
    settings = Settings(redis_url=f"unix://{tmp_path}/no-redis.sock", store=str(tmp_path))
    with TestClient(create_app(settings)) as client:
        assert client.get("/healthz").status_code == 200
        assert_error(client.get("/readyz"), 503, "Redis")
        assert_error(client.post("/v1/generations", json={"class_id": 1}), 503, "Redis")
        for path in ("/v1/jobs/" + "a" * 32, "/v1/jobs/" + "a" * 32 + "/events"):
            response = client.get(path)  # a well-formed id: Redis is asked
            assert_error(response, 503, "Redis")
            assert response.headers["retry-after"] == "5"
        assert client.get("/readyz").headers["retry-after"] == "5"


def test_a_stage_whose_worker_is_gone_shows_as_retrying(client: TestClient, redis_server):
    from jobs.lifecycle import Jobs

    job_id = submit(client)
    jobs = Jobs(redis_server.client(), 60)
    assert jobs.stage_started(job_id, "base64", {"model": "m"}, "ghost-worker")
    stage = client.get(f"/v1/jobs/{job_id}").json()["stages"][0]
    assert stage["status"] == "queued"
    assert stage["error"].startswith("retrying: its worker stopped responding")
