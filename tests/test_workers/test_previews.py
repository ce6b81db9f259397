"""Live previews: stage jobs run in-process against a real (embedded) Redis with tiny presets;
their progress events, read from the log and over the API's event stream, carry WebP previews
at the configured cadence, within the byte cap, and none when turned off."""

from __future__ import annotations

import base64
import io
import json
import uuid
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from api.main import create_app
from cascade.stages import StageRun
from cascade_client.events import EventParser
from jobs.connection import EmbeddedRedis
from jobs.plan import PlannedStage
from jobs.record import NewJob
from jobs.settings import Settings
from workers import runtime as runtime_module
from workers.previews import due, encode_preview, thumbnails
from workers.runtime import Runtime
from workers.stage import run_stage

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}
CAP = 16 * 1024  # characters of the data URL, as the event schema promises
PREFIX = "data:image/webp;base64,"


def make_runtime(redis_server: EmbeddedRedis, store: Path, previews: int) -> Runtime:
    redis_server.client().flushdb()
    settings = Settings(
        redis_url=redis_server.url, store=str(store), previews_per_stage=previews, **TINY
    )
    runtime = Runtime(settings, redis_server.client())
    runtime_module.install(runtime)
    return runtime


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    runtime_module.install(None)  # type: ignore[arg-type]
    torch.set_num_threads(threads)


def generate(runtime: Runtime, steps: tuple[int, int]) -> str:
    plan = [
        PlannedStage("base64", 64, 64, StageRun("ddim", steps[0])),
        PlannedStage("sr256", 256, 256, StageRun("ddim", steps[1], fidelity=0.0)),
    ]
    job = NewJob(uuid.uuid4().hex, "generation", {"class_id": 1}, 5, plan, (256, 256))  # type: ignore[arg-type]
    runtime.jobs.create(job)
    run_stage(job.id, "base64")
    run_stage(job.id, "sr256")
    assert runtime.jobs.get(job.id).status == "succeeded"
    return job.id


def decoded(url: str) -> Image.Image:
    assert url.startswith(PREFIX) and len(url) <= CAP, (url[:40], len(url))
    image = Image.open(io.BytesIO(base64.b64decode(url.removeprefix(PREFIX), validate=True)))
    image.load()
    assert image.format == "WEBP"
    return image


def test_progress_events_carry_previews_at_the_cadence(redis_server: EmbeddedRedis, tmp_path: Path):
    runtime = make_runtime(redis_server, tmp_path, previews=3)
    job_id = generate(runtime, steps=(9, 4))
    events = runtime.jobs.events.read(job_id)
    shown = {
        stage: [
            (event.data["step"], decoded(event.data["preview"]).size)
            for event in events
            if event.type == "progress" and event.data["stage"] == stage and "preview" in event.data
        ]
        for stage in ("base64", "sr256")
    }
    # 3 per stage, evenly spaced, the last step included; 64 px as is, 256 px halved to 128.
    assert shown["base64"] == [(3, (64, 64)), (6, (64, 64)), (9, (64, 64))]
    assert shown["sr256"] == [(2, (128, 128)), (3, (128, 128)), (4, (128, 128))]
    # The record holds no preview: only the events do.
    assert not any("preview" in key for key in runtime.jobs.get(job_id).fields)
    # The last preview is the stage's final estimate: close to the stored stage image.
    last = next(
        event.data["preview"]
        for event in reversed(events)
        if event.type == "progress" and event.data["stage"] == "base64"
    )
    # Compared on luma (WebP halves the chroma resolution): the stored stage image, not just
    # any image of the same kind (the same image flipped).
    stored = np.asarray(Image.open(tmp_path / job_id / "base64.png").convert("L"), float)
    shown_last = np.asarray(decoded(last).convert("L"), float)
    error = np.abs(shown_last - stored).mean()

    assert error < 0.25 * np.abs(shown_last - stored[::-1, ::-1]).mean()

    # Over HTTP: the event stream's progress events carry the same previews.
    with TestClient(create_app(runtime.settings)) as client:
        response = client.get(f"/v1/jobs/{job_id}/events")
    parser = EventParser()
    streamed = [event for line in response.text.splitlines() if (event := parser.feed(line))]
    parsed = [event.data.get("preview") for event in streamed if event.type == "progress"]
    logged = [event.data.get("preview") for event in events if event.type == "progress"]
    assert parsed == logged and sum(item is not None for item in parsed) == 6
    assert streamed[-1].type == "succeeded"
    assert "data:image" not in json.dumps(streamed[-1].data)  # nor the job's view


def test_no_previews_when_turned_off(redis_server: EmbeddedRedis, tmp_path: Path):
    runtime = make_runtime(redis_server, tmp_path, previews=0)
    job_id = generate(runtime, steps=(6, 3))
    progress = [event for event in runtime.jobs.events.read(job_id) if event.type == "progress"]
    assert progress and not any("preview" in event.data for event in progress)


@pytest.mark.parametrize(
    ("total", "count", "steps"),
    [
        (20, 4, [5, 10, 15, 20]),
        (7, 4, [2, 4, 6, 7]),
        (3, 4, [1, 2, 3]),  # more previews than steps: every step
        (1, 4, [1]),  # fidelity 1: one step
        (50, 0, []),
    ],
)
def test_preview_steps(total: int, count: int, steps: list[int]):
    assert [step for step in range(1, total + 1) if due(step, total, count)] == steps


def test_a_noise_image_at_1024_stays_under_the_cap():
    """The worst case for a codec: full-range noise (what random weights draw), downscaled
    from 1024 px, still fits in 16 KB; its thumbnail averages whole 8 x 8 blocks."""
    x0 = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(0)) * 4 - 2
    pixels = thumbnails(x0)
    assert pixels.shape == (1, 128, 128, 3) and pixels.dtype == torch.uint8
    block = ((x0[0, :, :8, :8].clamp(-1, 1) + 1) * 127.5).mean(dim=(1, 2))
    assert torch.allclose(pixels[0, 0, 0].float(), block, atol=1.0)
    url = encode_preview(pixels[0])
    assert url is not None and decoded(url).size == (128, 128)
