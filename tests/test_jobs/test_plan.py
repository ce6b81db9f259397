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
from cascade.chain import Cascade
from cascade.images import as_float_image, bytes_to_tensor, load_image
from cascade.stages import STAGES, StageRun, generation_stages, upscale_stages
from jobs import plan
from jobs.plan import PlannedStage
from jobs.record import JobRecord
from jobs.settings import Settings
from jobs.view import describe


@pytest.fixture(scope="module")
def cascade() -> Cascade:
    weights = {name: f"preset:{name}-tiny" for name in STAGES}
    return Cascade.load(weights)


GENERATIONS = {
    64: ["base64"],
    256: ["base64", "sr256"],
    1024: ["base64", "sr256", "sr1024"],
}
# A 4x upscale enters where the input's longer side is nearest the stage's native input on a
# log scale (64 for sr256, 256 for sr1024: the boundary is 128, which goes to sr256).
UPSCALES = [
    ((16, 16), 4, ["sr256"]),
    ((64, 64), 4, ["sr256"]),
    ((100, 60), 4, ["sr256"]),
    ((127, 128), 4, ["sr256"]),
    ((129, 40), 4, ["sr1024"]),
    ((500, 20), 4, ["sr1024"]),
    ((16, 16), 16, ["sr256", "sr1024"]),
    ((129, 40), 16, ["sr256", "sr1024"]),
]


@pytest.mark.parametrize("size", sorted(GENERATIONS))
def test_generation_runs_the_stages_up_to_its_size(cascade: Cascade, size: int):
    assert generation_stages(size) == GENERATIONS[size]
    assert [stage.name for stage in cascade.plan_generation(size)] == GENERATIONS[size]


@pytest.mark.parametrize(("shape", "scale", "expected"), UPSCALES)
def test_upscale_enters_at_the_nearest_stage(
    cascade: Cascade, shape: tuple[int, int], scale: int, expected: list[str]
):
    assert upscale_stages(*shape, scale) == expected
    assert [stage.name for stage in cascade.plan_upscale(*shape, scale)] == expected


def test_plan_rejects_what_the_cascade_rejects():
    with pytest.raises(ValueError, match="size"):
        generation_stages(128)
    with pytest.raises(ValueError, match="scale"):
        upscale_stages(64, 64, 8)


def test_a_generation_plan_uses_the_request_else_the_stage_defaults():
    settings = Settings(sampler_sr256="ddpm", steps_sr256=7)
    planned = plan.plan_generation(settings, 256, guidance=2.0)
    assert planned.output == (256, 256)
    assert [(stage.name, stage.height, stage.width) for stage in planned.stages] == [
        ("base64", 64, 64),
        ("sr256", 256, 256),
    ]
    assert (planned.stages[0].run.sampler, planned.stages[0].run.steps) == ("ddim", 50)
    assert (planned.stages[1].run.sampler, planned.stages[1].run.steps) == ("ddpm", 7)
    assert all(stage.run.guidance == 2.0 for stage in planned.stages)
    asked = plan.plan_generation(settings, 64, sampler="ancestral", steps=3).stages[0].run
    assert (asked.sampler, asked.steps) == ("ancestral", 3)


def test_an_upscale_plan_picks_its_scale_and_shrinks_to_the_target():
    settings = Settings()
    planned = plan.plan_upscale(settings, 30, 20, target=400)  # 4x is 120 long: 16x is needed
    assert planned.scale == 16 and planned.output == (400, 267)
    assert [(stage.name, stage.height, stage.width) for stage in planned.stages] == [
        ("sr256", 120, 80),
        ("sr1024", 480, 320),
    ]
    assert plan.plan_upscale(settings, 30, 20, scale=4).output == (120, 80)


def test_unplannable_requests_raise_one_error_saying_what_is_allowed():
    settings = Settings(max_steps=100, max_output_pixels=1000 * 1000)
    with pytest.raises(plan.PlanError, match="between 1 and 100, got 101") as caught:
        plan.plan_generation(settings, 64, steps=101)
    assert caught.value.reason == "invalid"
    with pytest.raises(plan.PlanError, match="size must be one of") as caught:
        plan.plan_generation(settings, 128)
    with pytest.raises(plan.PlanError, match="more than 16x") as caught:
        plan.plan_upscale(settings, 10, 10, target=1000)
    assert caught.value.reason == "invalid"
    with pytest.raises(plan.PlanError, match="limit is 1000000 pixels") as caught:
        plan.plan_upscale(settings, 100, 100, scale=16)
    assert caught.value.reason == "too_large"


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
    ours = bytes_to_tensor(tensor_bytes(decode(data)[0]))  # what the first stage will read
    assert ours.dtype == torch.uint8 and ours.shape == (1, 3, 20, 30)  # decoded once, 8 bits
    torch.testing.assert_close(as_float_image(ours), load_image(data), rtol=0, atol=0)


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


def test_a_generation_class_is_resolved_and_must_be_known():
    assert plan.planned_class(None, "goldfish", None) == 1  # ImageNet's class 1
    assert plan.planned_class(281, None, [281, 1]) == 281
    with pytest.raises(plan.PlanError, match="unknown class name 'no such thing'"):
        plan.planned_class(None, "no such thing", None)
    with pytest.raises(plan.PlanError, match=r"it knows: 1 \(goldfish"):
        plan.planned_class(281, None, [1])


def test_a_student_default_runs_only_its_step_counts_else_the_fallback_sampler():
    settings = Settings(sampler_sr256="student", steps_sr256=4)
    default = plan.plan_upscale(settings, 64, 64, scale=4).stages[0].run
    assert (default.sampler, default.steps) == ("student", 4)
    one = plan.plan_upscale(settings, 64, 64, scale=4, steps=1).stages[0].run
    assert (one.sampler, one.steps) == ("student", 1)
    # Steps the student was not distilled for sample with the fallback's sampler, not an error.
    twenty = plan.plan_upscale(settings, 64, 64, scale=4, steps=20).stages[0].run
    assert (twenty.sampler, twenty.steps) == ("dpmpp_2m", 20)
    configured = Settings(sampler_sr256="student", steps_sr256=12)
    run = plan.plan_upscale(configured, 64, 64, scale=4).stages[0].run
    assert (run.sampler, run.steps) == ("dpmpp_2m", 12)
    # Naming the student with a count it does not run is refused, saying which counts it runs.
    with pytest.raises(plan.PlanError, match="sampler student runs in 1 or 4 steps, not 20"):
        plan.plan_upscale(settings, 64, 64, scale=4, sampler="student", steps=20)
