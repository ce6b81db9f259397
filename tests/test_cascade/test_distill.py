"""Few-step students (cascade.distill): their timesteps, their sampler, and the distillation."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from cascade.chain import Cascade
from cascade.checkpoints import load_model, model_from_preset, save_model
from cascade.distill import STUDENT_STEPS, Distiller, fine_energy_error, teacher_outputs
from cascade.pipeline import Stage, StageError, load_stage
from cascade.samplers import (
    STUDENT_LOWEST_STEP,
    denoise_once,
    randn_like,
    student_timesteps,
)
from cascade.stages import STUDENT_FALLBACK, StageRun, stage_seed
from cascade.tiling import PositionNoise


@pytest.fixture(scope="module")
def teacher():
    return model_from_preset("sr256-tiny")


def test_student_timesteps_run_from_the_top_through_the_restart(teacher):
    schedule = teacher.spec.schedule.build()
    top, restart = len(schedule) - 1, 1400
    assert student_timesteps(schedule, 1, restart) == (top,)
    four = student_timesteps(schedule, 4, restart)
    assert len(four) == 4 and four[0] == top and four[1] == restart
    assert four[-1] == STUDENT_LOWEST_STEP
    assert list(four) == sorted(four, reverse=True)
    # Equal log-SNR gaps below the restart.
    acp = schedule.alphas_cumprod.double()
    lam = [float(0.5 * (torch.log(acp[i]) - torch.log1p(-acp[i]))) for i in four[1:]]
    gaps = [b - a for a, b in zip(lam, lam[1:], strict=False)]
    assert max(gaps) - min(gaps) < 0.1 * max(gaps)


def student_of(teacher, few_step):
    spec = dataclasses.replace(teacher.spec, few_step=few_step)
    return dataclasses.replace(teacher, spec=spec)


def test_one_step_student_is_its_clean_estimate_from_the_items_noise(teacher):
    schedule = teacher.spec.schedule.build()
    stage = Stage("sr256", teacher, student=student_of(teacher, ((len(schedule) - 1,),)))
    low_res = torch.rand(2, 3, 16, 16) * 2 - 1
    out = stage.run(seeds=[3, 4], low_res=low_res, run=StageRun("student", 1))
    assert out.shape == (2, 3, 64, 64)
    # By hand: the item's noise (its stage seed's first draw, keyed to position), one clean
    # estimate at the top.
    noise = randn_like(
        torch.empty(2, 3, 64, 64), PositionNoise([stage_seed(s, "sr256") for s in (3, 4)], 0, 0)
    )
    cond = {"low_res": low_res, "aug_level": torch.zeros(2)}
    denoiser = stage.upscale_denoiser()
    expected = denoiser.to_image(denoise_once(denoiser, noise, schedule, cond=cond), low_res)
    torch.testing.assert_close(out, expected.clamp(-1, 1), atol=1e-5, rtol=0)
    # Another seed, another output: the student draws its detail from the item's noise.
    other = stage.run(seeds=[5, 4], low_res=low_res, run=StageRun("student", 1))
    assert not torch.allclose(other[0], out[0]) and torch.allclose(other[1], out[1], atol=1e-6)


def test_without_a_student_the_sampler_student_runs_the_fallback(teacher):
    low_res = torch.rand(1, 3, 16, 16) * 2 - 1
    stage = Stage("sr256", teacher)
    assert stage.effective(StageRun("student", 4)).sampler == STUDENT_FALLBACK.sampler
    assert stage.effective(StageRun("student", 4)).steps == STUDENT_FALLBACK.steps
    one = stage.effective(StageRun("student", 1))  # the fastest setting stays one step
    assert (one.sampler, one.steps) == (STUDENT_FALLBACK.sampler, 1)
    out = stage.run(seeds=[0], low_res=low_res, run=StageRun("student", 4))
    torch.testing.assert_close(out, stage.run(seeds=[0], low_res=low_res, run=STUDENT_FALLBACK))


def test_the_student_serves_only_the_fidelity_it_was_distilled_at(teacher):
    schedule = teacher.spec.schedule.build()
    top = len(schedule) - 1
    fidelity = Stage("sr256", teacher).default_fidelity
    restart = round((1.0 - fidelity) * top)
    few_step = tuple(student_timesteps(schedule, n, restart) for n in STUDENT_STEPS)
    stage = Stage("sr256", teacher, student=student_of(teacher, few_step))
    assert stage.student_restart == restart
    # Its own fidelity (named or the default): the student runs.
    assert stage.effective(StageRun("student", 4)).sampler == "student"
    assert stage.effective(StageRun("student", 4, fidelity=fidelity)).sampler == "student"
    # Another fidelity: the run samples as a stage without a student does, and says so.
    for other in (1.0, fidelity - 0.2, 0.0):
        run = stage.effective(StageRun("student", 4, fidelity=other))
        assert (run.sampler, run.steps, run.fidelity) == (
            STUDENT_FALLBACK.sampler,
            STUDENT_FALLBACK.steps,
            other,
        )
    low_res = torch.rand(1, 3, 16, 16) * 2 - 1
    asked = StageRun("student", 4, fidelity=1.0)
    torch.testing.assert_close(
        stage.run(seeds=[0], low_res=low_res, run=asked),
        Stage("sr256", teacher).run(seeds=[0], low_res=low_res, run=StageRun(fidelity=1.0)),
    )
    # A one-call-only student has no restart to compare: it serves every run.
    one = Stage("sr256", teacher, student=student_of(teacher, ((top,),)))
    assert one.student_restart is None
    assert one.effective(StageRun("student", 1, fidelity=0.9)).sampler == "student"


def test_student_sampler_refuses_step_counts_and_students_that_do_not_fit(teacher):
    low_res = torch.zeros(1, 3, 16, 16)
    stage = Stage("sr256", teacher, student=student_of(teacher, ((1999,),)))
    with pytest.raises(StageError, match=r"runs in \[1\] steps, not 4"):
        stage.run(seeds=[0], low_res=low_res, run=StageRun("student", 4))
    with pytest.raises(StageError, match="not a few-step student"):
        stage.attach_student(teacher)  # no few_step list
    other = model_from_preset("sr1024-tiny")
    with pytest.raises(StageError, match="not a few-step student"):
        stage.attach_student(student_of(other, ((1999,),)))


def test_a_student_beside_its_weights_is_loaded_and_described(teacher, tmp_path):
    weights = tmp_path / "sr256.safetensors"
    save_model(weights, teacher.spec, teacher.network.state_dict())
    plain = load_stage("sr256", str(weights), "cpu", StageRun("student", 1))
    assert plain.student is None and "student" not in plain.describe()
    student = student_of(teacher, ((1999,),))
    save_model(tmp_path / "sr256.student.safetensors", student.spec, teacher.network.state_dict())
    stage = load_stage("sr256", str(weights), "cpu", StageRun("student", 1))
    assert stage.student is not None
    described = stage.describe()["student"]
    assert described["model"] == "sr256.student.safetensors" and described["steps"] == [1]
    cascade = Cascade.load({"sr256": str(weights)}, stages=["sr256"])
    assert cascade.stages["sr256"].student is not None


def test_distillation_brings_the_student_towards_the_teachers_default(teacher, tmp_path):
    gen = torch.Generator().manual_seed(0)
    low_res = torch.rand(4, 3, 16, 16, generator=gen) * 2 - 1
    noise = torch.randn(4, 3, 64, 64, generator=gen)
    with torch.inference_mode():
        target = teacher_outputs(Stage("sr256", teacher), low_res, noise)
    pairs = {"low_res": low_res, "noise": noise, "target": target.clone()}
    distiller = Distiller(teacher, "sr256", lr=3e-3, ema=0.0, seed=0)
    assert tuple(len(kept) for kept in distiller.few_step) == STUDENT_STEPS
    first = distiller.train_step(pairs, 4)
    for _ in range(11):  # at the default fidelity 0.6: 0.41 -> 0.27 in 12 steps
        last = distiller.train_step(pairs, 4)
    assert last < 0.7 * first
    path = distiller.save(tmp_path, {"distill.teacher": "sr256-tiny"})
    student = load_model(path)
    assert student.spec.few_step == distiller.few_step
    assert student.spec.network == teacher.spec.network
    stage = Stage("sr256", teacher, student=student)
    out = stage.run(seeds=[0], low_res=low_res[:1], run=StageRun("student", 4))
    assert out.shape == (1, 3, 64, 64) and bool(out.isfinite().all())

    # A run whose state file is gone goes on from the saved student: same weights, fresh Adam.
    again = Distiller(teacher, "sr256", lr=3e-3, ema=0.0, seed=0)
    again.start_from(student)
    for ours, saved in zip(
        again.network.state_dict().values(), student.network.state_dict().values(), strict=True
    ):
        assert torch.equal(ours, saved.float())
    assert again.step == 0
    with pytest.raises(ValueError, match="not distilled from this teacher"):
        again.start_from(teacher)


def _checker() -> torch.Tensor:
    """A 16 x 16 three-channel checkerboard of +-1: all of it above a 4x input's Nyquist."""
    checker = (torch.arange(16).reshape(1, 1, 16, 1) + torch.arange(16)) % 2 * 2.0 - 1.0
    return checker.expand(1, 3, 16, 16)


def test_the_fine_band_weight_adds_only_the_error_above_the_inputs_nyquist(teacher):
    plain = Distiller(teacher, "sr256", lr=1e-3, ema=0.0, seed=0)
    weighted = Distiller(teacher, "sr256", lr=1e-3, ema=0.0, seed=0, fine_weight=3.0)
    target = torch.zeros(1, 3, 16, 16)
    coarse = (
        torch.arange(16.0).reshape(1, 1, 4, 4).repeat_interleave(4, -1).repeat_interleave(4, -2)
    )
    coarse = coarse.expand(1, 3, 16, 16) / 16  # constant over each 4 x 4 block: no fine band
    torch.testing.assert_close(weighted.loss(coarse, target), plain.loss(coarse, target))
    checker = _checker()  # all fine band, block means zero
    torch.testing.assert_close(weighted.loss(checker, target), 4.0 * plain.loss(checker, target))


def test_the_energy_weight_costs_missing_detail_not_where_it_sits(teacher):
    plain = Distiller(teacher, "sr256", lr=1e-3, ema=0.0, seed=0)
    weighted = Distiller(teacher, "sr256", lr=1e-3, ema=0.0, seed=0, energy_weight=2.0)
    target = _checker() * 0.5  # all fine band, RMS 0.5 in every window
    # The same detail one pixel over: L2 pays for the phase, the energy term nothing.
    shifted = torch.roll(target, 1, dims=-1)
    assert float(fine_energy_error(shifted, target, 4)) < 1e-8
    torch.testing.assert_close(weighted.loss(shifted, target), plain.loss(shifted, target))
    # A smooth output (L2's answer to detail it cannot place) pays its missing RMS (0.5) squared.
    flat = torch.zeros_like(target)
    torch.testing.assert_close(
        fine_energy_error(flat, target, 4), torch.tensor(0.25), atol=1e-3, rtol=0
    )
    torch.testing.assert_close(
        weighted.loss(flat, target), plain.loss(flat, target) + 2.0 * 0.25, atol=2e-3, rtol=0
    )
    # So does a grainier one, and only in the windows where it differs (one of the four).
    busier = target.clone()
    busier[..., :8, :8] *= 3.0
    assert abs(float(fine_energy_error(busier, target, 4)) - 1.0 / 4) < 1e-3
