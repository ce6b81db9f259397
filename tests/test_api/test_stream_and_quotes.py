"""Following a job over HTTP against a real (embedded) Redis, without workers: Server-Sent
Events (replay, `Last-Event-ID`, live), quotes (`dry_run`), the limits and the web page."""

from __future__ import annotations

import io
import json
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api.main import create_app
from cascade.stages import DEFAULT_FIDELITY, STAGES
from jobs.connection import EmbeddedRedis
from jobs.lifecycle import Jobs
from jobs.queues import stage_queue
from jobs.settings import Settings
from jobs.stats import record_stage, stats_key

REPO = Path(__file__).resolve().parents[2]

with warnings.catch_warnings():  # starlette nudges towards httpx2, which is not installed here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


@pytest.fixture(scope="module")
def settings(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        store=str(tmp_path_factory.mktemp("store")),
        max_input_pixels=512 * 512,
        max_output_pixels=1024 * 1024,
        steps_base64=10,
        steps_sr256=5,
    )


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def jobs(redis_server: EmbeddedRedis, settings: Settings) -> Jobs:
    return Jobs(redis_server.client(), settings.result_ttl)


def parse_sse(text: str) -> list[dict[str, object]]:
    """Events of a text/event-stream body: id, event and JSON data (comments skipped)."""
    events = []
    for block in text.replace("\r\n", "\n").split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if "event" in fields:
            events.append({**fields, "data": json.loads(fields["data"])})
    return events


def submit(client: TestClient, **body: object) -> str:
    response = client.post("/v1/generations", json={"class_id": 1, "size": 256, **body})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def run_like_a_worker(jobs: Jobs, job_id: str) -> None:
    """What a worker's stage jobs write, without sampling."""
    for stage in ("base64", "sr256"):
        jobs.stage_started(job_id, stage, {"model": "tiny"}, "worker-1")
        jobs.progress([job_id], stage, 1, 2)
        jobs.progress([job_id], stage, 2, 2)
        jobs.stage_ended(job_id, stage, "succeeded")
    jobs.end(job_id, "succeeded")


def test_events_of_an_unknown_job_are_404(client: TestClient):
    response = client.get("/v1/jobs/nope/events")
    assert response.status_code == 404
    assert response.json()["error"] == "no job 'nope' (unknown, or expired from the job list)"


def test_replay_then_resume_after_last_event_id(client: TestClient, jobs: Jobs):
    job_id = submit(client)
    run_like_a_worker(jobs, job_id)
    response = client.get(f"/v1/jobs/{job_id}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    assert [event["event"] for event in events] == [
        "queued",
        *("stage_started", "progress", "progress", "stage_finished") * 2,
        "succeeded",
    ]
    assert [event["id"] for event in events] == [event.id for event in jobs.events.read(job_id)]
    # The terminal event is the job as polling shows it.
    polled = client.get(f"/v1/jobs/{job_id}").json()
    assert events[-1]["data"] == polled
    assert polled["links"]["events"] == f"/v1/jobs/{job_id}/events"
    # Resume after the fourth event: the rest, in order, and nothing twice.
    resumed = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": events[3]["id"]})
    assert parse_sse(resumed.text) == events[4:]
    by_query = client.get(f"/v1/jobs/{job_id}/events", params={"after": events[8]["id"]})
    assert parse_sse(by_query.text) == events[9:]
    # After the terminal event there is nothing more: 204 tells EventSource to stop.
    done = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": events[-1]["id"]})
    assert done.status_code == 204


@pytest.mark.parametrize("last", ["yesterday", "1-2-3", "-1"])
def test_a_bad_last_event_id_is_a_422(client: TestClient, last: str):
    job_id = submit(client)
    response = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": last})
    assert response.status_code == 422
    assert "not an event id" in response.json()["error"]


def test_events_arrive_live_until_the_job_ends(client: TestClient, jobs: Jobs):
    job_id = submit(client)
    seen: list[str] = []

    def worker() -> None:
        time.sleep(0.3)  # the client is already waiting on the stream
        run_like_a_worker(jobs, job_id)

    thread = threading.Thread(target=worker)
    thread.start()
    started = time.monotonic()
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        for line in response.iter_lines():
            if line.startswith("event:"):
                seen.append(line.split(":", 1)[1].strip())
    thread.join()
    assert seen[0] == "queued" and seen[-1] == "succeeded" and len(seen) == 10
    assert time.monotonic() - started < 10  # ended by the terminal event, not a timeout


def test_a_canceled_job_ends_its_stream(client: TestClient):
    job_id = submit(client)
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 202
    events = parse_sse(client.get(f"/v1/jobs/{job_id}/events").text)
    assert [event["event"] for event in events] == ["queued", "canceled"]
    assert [stage["status"] for stage in events[-1]["data"]["stages"]] == ["canceled"] * 2


def queued_everywhere(redis_server: EmbeddedRedis) -> tuple[list[int], int]:
    connection = redis_server.client()
    counts = [stage_queue(connection, name).count for name in STAGES]
    return counts, len(connection.keys("cascade:job:*"))


def test_dry_run_quotes_without_queuing(client: TestClient, redis_server: EmbeddedRedis):
    connection = redis_server.client()
    connection.delete(*(stats_key(name) for name in STAGES))
    before = queued_everywhere(redis_server)
    response = client.post(
        "/v1/generations", json={"class_name": "tabby", "size": 256, "dry_run": True}
    )
    assert response.status_code == 200, response.text
    assert queued_everywhere(redis_server) == before  # nothing queued, no record, no log
    quote = response.json()
    assert quote["dry_run"] is True and quote["kind"] == "generation" and quote["seed"] is None
    assert quote["request"]["class_id"] == 281 and "seed" not in quote["request"]
    assert [stage["name"] for stage in quote["stages"]] == ["base64", "sr256"]
    base, upscaler = quote["stages"]
    assert (base["steps"], base["cost"]) == (10, 10 * 64 * 64)  # the service's default steps
    assert upscaler["cost"] == 5 * 256 * 256 and quote["cost"] == base["cost"] + upscaler["cost"]
    # Nothing measured and nobody serving: no invented numbers, and notes that say why.
    assert base["run_seconds"] is None and quote["total_seconds"] is None
    assert base["workers"] == 0 and base["wait_seconds"] is None
    notes = " ".join(quote["notes"])
    assert "stage base64 has no measured run yet" in notes and "no worker serves" in notes


def test_dry_run_prices_measured_work(client: TestClient, redis_server: EmbeddedRedis):
    connection = redis_server.client()
    connection.delete(*(stats_key(name) for name in STAGES))
    record_stage(connection, "base64", 2.0, "succeeded", work=64 * 64 * 20)  # 0.1 s a step
    response = client.post(
        "/v1/generations", json={"class_id": 1, "size": 64, "steps": 30, "seed": 3, "dry_run": True}
    )
    assert response.status_code == 200, response.text
    quote = response.json()
    (base,) = quote["stages"]
    assert base["run_seconds"] == pytest.approx(3.0) and base["measured_runs"] == 1
    assert base["seconds_per_megapixel_step"] == pytest.approx(0.1 / (64 * 64) * 1e6, rel=1e-3)
    assert base["queue_depth"] == stage_queue(connection, "base64").count
    assert quote["seed"] == 3 and quote["run_seconds"] == pytest.approx(3.0)


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_dry_run_of_an_upscale(client: TestClient, redis_server: EmbeddedRedis):
    before = queued_everywhere(redis_server)
    response = client.post(
        "/v1/upscales",
        data={"target_size": "200", "dry_run": "true", "steps": "4"},
        files={"file": ("in.png", png(60, 45))},
    )
    assert response.status_code == 200, response.text
    assert queued_everywhere(redis_server) == before
    quote = response.json()
    assert quote["kind"] == "upscale" and quote["output"] == {"height": 150, "width": 200}
    assert quote["request"]["input"] == {"height": 45, "width": 60, "mode": "RGB", "bits": 8}
    assert [(s["name"], s["height"], s["width"], s["cost"]) for s in quote["stages"]] == [
        ("sr256", 180, 240, 180 * 240 * 4)
    ]
    # A quote checks its input as a real upscale does.
    bad = client.post(
        "/v1/upscales",
        data={"scale": "4", "dry_run": "true"},
        files={"file": ("notes.png", b"just some text")},
    )
    assert bad.status_code == 422 and "not an image" in bad.json()["error"]
    too_big = client.post(
        "/v1/upscales",
        data={"scale": "16", "dry_run": "true"},
        files={"file": ("in.png", png(80, 80))},
    )
    assert too_big.status_code == 413 and "limit" in too_big.json()["error"]


def test_dry_run_must_be_a_boolean(client: TestClient):
    response = client.post("/v1/generations", json={"class_id": 1, "dry_run": "yes"})
    assert response.status_code == 422 and "dry_run" in response.json()["error"]


def test_limits(client: TestClient, settings: Settings):
    limits = client.get("/v1/limits").json()
    assert limits["sizes"] == [64, 256, 1024] and limits["scales"] == [4, 16]
    assert limits["max_output_pixels"] == settings.max_output_pixels
    assert limits["defaults"]["base64"] == {"sampler": "ddim", "steps": 10}  # no fidelity
    for stage in ("sr256", "sr1024"):  # each upscaler's own default fidelity
        assert limits["defaults"][stage]["fidelity"] == DEFAULT_FIDELITY[stage]
        assert limits["defaults"][stage]["low_band"] == "estimate"
    assert limits["low_bands"] == ["estimate", "sample"]
    assert limits["default_fidelity"] == DEFAULT_FIDELITY["sr256"]
    assert "dpmpp_2m" in limits["samplers"] and "wavelet" in limits["color_fixes"]


def test_the_page_and_its_files(client: TestClient):
    page = client.get("/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    for name, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        assert f"/static/{name}" in page.text
        response = client.get(f"/static/{name}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    # The script's ES modules, each served as JavaScript (a module script needs that type).
    for module in (REPO / "api" / "static").glob("*.js"):
        response = client.get(f"/static/{module.name}")
        assert response.status_code == 200 and "javascript" in response.headers["content-type"]
    assert client.get("/static/nothing.js").status_code == 404


def test_default_limits_admit_a_4x_upscale_of_a_1024_px_photo_and_quote_its_memory(
    redis_server: EmbeddedRedis, tmp_path: Path
):
    """The shipped limits (no overrides): 1024 px -> 4096 px at the default run is admitted;
    the quote says what memory its stage needs, which grows by the output, not by steps."""
    settings = Settings(redis_url=redis_server.url, store=str(tmp_path / "store"))
    buffer = io.BytesIO()
    Image.fromarray(np.full((1024, 1024, 3), 120, np.uint8)).save(buffer, format="PNG")
    with TestClient(create_app(settings)) as client:

        def quote(data: bytes, **form: str) -> dict:
            response = client.post(
                "/v1/upscales",
                data={"dry_run": "true", **form},
                files={"file": ("photo.png", data, "image/png")},
            )
            assert response.status_code == 200, response.text
            return response.json()

        big = quote(buffer.getvalue(), scale="4")
        assert big["output"] == {"height": 4096, "width": 4096}
        (stage,) = big["stages"]
        assert stage["name"] == "sr1024" and stage["steps"] == settings.steps_for("sr1024")
        assert big["cost"] == 4096 * 4096 * stage["steps"] <= settings.max_cost
        assert big["memory_mb"] == stage["memory_mb"]
        small_buffer = io.BytesIO()
        Image.fromarray(np.full((256, 256, 3), 120, np.uint8)).save(small_buffer, format="PNG")
        small = quote(small_buffer.getvalue(), scale="4")  # 1024 px: one window, no tiles
        one_float_copy = 4096 * 4096 * 3 * 4 / 2**20  # 192 MB
        grown = big["memory_mb"] - small["memory_mb"]
        assert one_float_copy <= grown <= 2 * one_float_copy
        assert big["memory_mb"] < 2 * small["memory_mb"]
        more = quote(buffer.getvalue(), scale="4", steps=str(4 * stage["steps"]))
        assert more["memory_mb"] == big["memory_mb"] and more["cost"] == 4 * big["cost"]
        response = client.post(
            "/v1/upscales",
            data={"dry_run": "true", "scale": "16"},
            files={"file": ("photo.png", buffer.getvalue(), "image/png")},
        )
        assert response.status_code == 413 and str(4096 * 4096) in response.text
