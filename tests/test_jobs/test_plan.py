"""The torch-free plan and job view agree with the cascade, and the API's image conversion
matches the library's."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from api.uploads import decode, tensor_bytes
from cascade.images import bytes_to_tensor, load_image
from cascade.pipeline import Cascade
from cascade.stages import STAGES, StageRun, generation_stages, upscale_stages
from jobs import plan
from jobs.plan import PlannedStage
from jobs.record import JobRecord
from jobs.view import describe


@pytest.fixture(scope="module")
def cascade() -> Cascade:
    weights = {name: f"preset:{name}-tiny" for name in STAGES}
    return Cascade.load(weights)


@pytest.mark.parametrize("size", [64, 256, 1024])
def test_generation_plan_matches(cascade: Cascade, size: int):
    expected = [stage.name for stage in cascade.plan_generation(size)]
    assert generation_stages(size) == expected


@pytest.mark.parametrize("scale", [4, 16])
@pytest.mark.parametrize("shape", [(16, 16), (64, 64), (100, 60), (127, 128), (129, 40), (500, 20)])
def test_upscale_plan_matches(cascade: Cascade, shape: tuple[int, int], scale: int):
    expected = [stage.name for stage in cascade.plan_upscale(*shape, scale)]
    assert upscale_stages(*shape, scale) == expected


def test_plan_rejects_what_the_cascade_rejects():
    with pytest.raises(ValueError, match="size"):
        generation_stages(128)
    with pytest.raises(ValueError, match="scale"):
        upscale_stages(64, 64, 8)


def test_sizes_follow_the_stages():
    assert plan.sizes(["base64", "sr256", "sr1024"], None, None) == [
        (64, 64),
        (256, 256),
        (1024, 1024),
    ]
    assert plan.sizes(["sr256", "sr1024"], 30, 20) == [(120, 80), (480, 320)]


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L"])
def test_upload_conversion_matches_load_image(mode: str):
    pixels = np.random.default_rng(0).integers(0, 255, (20, 30, 4), dtype=np.uint8)
    image = Image.fromarray(pixels, "RGBA").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    data = buffer.getvalue()
    ours = bytes_to_tensor(tensor_bytes(decode(data)))  # what the first stage will read
    assert ours.dtype == torch.float32 and ours.shape == (1, 3, 20, 30)
    torch.testing.assert_close(ours, load_image(data), rtol=0, atol=0)


def record(statuses: dict[str, str], steps: dict[str, int]) -> JobRecord:
    stages = [
        PlannedStage("base64", 64, 64, StageRun("ddim", 10)),
        PlannedStage("sr256", 256, 256, StageRun("ddim", 10)),
    ]
    fields = {
        "id": "job",
        "kind": "generation",
        "status": "running",
        "stage": "sr256",
        "seed": "1",
        "request": json.dumps({"class_id": 1}),
        "plan": json.dumps([stage.to_dict() for stage in stages]),
        "output": "[256, 256]",
        "created_at": "100.0",
        "started_at": "100.0",
    }
    for name, status in statuses.items():
        fields[f"{name}.status"] = status
        fields[f"{name}.step"] = str(steps.get(name, 0))
    return JobRecord(fields)


def test_progress_is_weighted_by_pixels_times_steps():
    job = describe(record({"base64": "succeeded", "sr256": "running"}, {"sr256": 5}), now=110.0)
    base, upscaler = 64 * 64 * 10, 256 * 256 * 10
    expected = (base + 0.5 * upscaler) / (base + upscaler)
    assert job["progress"] == pytest.approx(expected, abs=1e-4)
    # 10 s for `expected` of the work: the rest at the same rate.
    assert job["eta_seconds"] == pytest.approx(10 * (1 - expected) / expected, abs=0.1)
    assert job["stages"][0]["preview"] == "/v1/jobs/job/stages/base64"
    assert job["stages"][1]["preview"] is None and job["result"] is None


def test_queued_job_has_no_progress_or_eta():
    fields = record({"base64": "queued", "sr256": "pending"}, {}).fields
    fields.update(status="queued", started_at="")
    job = describe(JobRecord(fields))
    assert job["progress"] == 0.0 and job["eta_seconds"] is None and job["started_at"] is None


def test_a_planned_stage_keeps_its_run_through_the_record():
    """The job record is JSON: every field of the run comes back, and a record written before
    a field existed reads as that field's default."""
    planned = PlannedStage(
        "sr256", 256, 256, StageRun("ancestral", 7, fidelity=0.3, low_band="sample")
    )
    assert PlannedStage.from_dict(json.loads(json.dumps(planned.to_dict()))) == planned
    older = {key: value for key, value in planned.to_dict().items() if key != "low_band"}
    assert PlannedStage.from_dict(older).run.low_band is None
