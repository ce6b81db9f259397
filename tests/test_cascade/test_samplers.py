"""Samplers over the denoiser contract: shapes, determinism, batching, cancellation."""

from __future__ import annotations

import pytest
import torch

from cascade.checkpoints import load
from cascade.samplers import (
    SAMPLERS,
    SamplingCanceled,
    generators,
    randn_like,
    sample,
)
from cascade.schedule import ScheduleConfig
from cascade.stages import StageRun

ALL = sorted(SAMPLERS)


@pytest.fixture(scope="module")
def sr_model():
    return load("preset:sr256-tiny")


def _run(model, settings, seeds, low_res, callback=None):
    gens = generators(seeds)
    x = randn_like(torch.empty(len(seeds), 3, 64, 64), gens)
    cond = {"low_res": low_res, "aug_level": torch.zeros(len(seeds))}
    schedule = model.spec.schedule.build()
    return sample(
        model.denoiser, x, schedule, settings, cond=cond, generator=gens, callback=callback
    )


@pytest.mark.parametrize("name", ALL)
def test_same_seed_same_image_and_batch_item_equals_single(sr_model, name):
    low_res = torch.rand(2, 3, 16, 16) * 2 - 1
    settings = StageRun(name, steps=4, eta=1.0 if name == "ddim" else 0.0)
    batch = _run(sr_model, settings, [11, 12], low_res)
    again = _run(sr_model, settings, [11, 12], low_res)
    alone = _run(sr_model, settings, [12], low_res[1:])
    assert batch.shape == (2, 3, 64, 64)
    assert torch.equal(batch, again)
    # Convolution kernels sum in a batch-size-dependent order: equal to float32 rounding
    # (1e-3 is 1/8 of one 8-bit grey level in [-1, 1]).
    torch.testing.assert_close(batch[1:], alone, atol=1e-3, rtol=0)
    other = _run(sr_model, settings, [13], low_res[1:])
    assert not torch.allclose(other, alone)


@pytest.mark.parametrize("steps", [1, 3, 7, 50])
def test_any_step_count(sr_model, steps):
    calls = []
    _run(
        sr_model,
        StageRun("dpmpp_2m", steps),
        [0],
        torch.zeros(1, 3, 16, 16),
        callback=lambda step, total, x0: calls.append((step, total)),
    )
    assert calls == [(k, steps) for k in range(1, steps + 1)]


def test_steps_beyond_schedule_refused(sr_model):
    with pytest.raises(ValueError, match="steps must be <= 2000"):
        _run(sr_model, StageRun("ddim", 2001), [0], torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="unknown sampler"):
        StageRun("euler", 10)


@pytest.mark.parametrize("name", ALL)
def test_callback_cancels_within_one_step(sr_model, name):
    seen = []

    def cancel_at_two(step, total, x0):
        seen.append(step)
        assert x0.shape == (1, 3, 64, 64)
        if step == 2:
            raise SamplingCanceled

    with pytest.raises(SamplingCanceled):
        _run(sr_model, StageRun(name, 10), [0], torch.zeros(1, 3, 16, 16), cancel_at_two)
    assert seen == [1, 2]


class Oracle:
    """A perfect denoiser for data that is one known image: eps from the true x_0."""

    def __init__(self, x0):
        self.x0 = x0

    def __call__(self, x, t, schedule, cond):
        from cascade.denoiser import Prediction

        acp = schedule.alphas_cumprod.to(x.dtype)[t].view(-1, 1, 1, 1)
        return Prediction(eps=(x - acp.sqrt() * self.x0) / (1 - acp).sqrt())


@pytest.mark.parametrize("name", ALL)
def test_samplers_recover_the_data_with_a_perfect_denoiser(name):
    x0 = torch.rand(1, 3, 8, 8) * 1.6 - 0.8
    schedule = ScheduleConfig("adm", "cosine", 1000).build()
    gens = generators([3])
    out = sample(
        Oracle(x0),
        randn_like(x0, gens),
        schedule,
        StageRun(name, 20),
        cond={},
        generator=gens,
    )
    # Ancestral samplers add posterior noise at every step; at the end it is tiny.
    tolerance = 5e-3 if name in ("ddim", "dpmpp_2m") else 0.1
    assert (out - x0).abs().max() < tolerance


SCHEDULES = {
    "sr3": ScheduleConfig("sr3", "linear", 2000, 1e-6, 1e-2),
    "adm": ScheduleConfig("adm", "cosine", 1000),
}


class RawOracle:
    """A perfect network in a given parameterisation: outputs the exact eps, v or x0 of the
    diffused variable (the image, or the residual over the upsampled condition)."""

    def __init__(self, clean, prediction):
        self.clean, self.prediction = clean, prediction

    def __call__(self, x, t, schedule, cond):
        from cascade.denoiser import Prediction

        acp = schedule.alphas_cumprod.to(x.dtype)[t].view(-1, 1, 1, 1)
        a, s = acp.sqrt(), (1 - acp).sqrt()
        eps = (x - a * self.clean) / s
        raw = {"eps": eps, "x0": self.clean, "v": a * eps - s * self.clean}[self.prediction]
        return Prediction(eps=raw)


@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
@pytest.mark.parametrize("diffused", ["image", "residual"])
@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
@pytest.mark.parametrize("name", ALL)
def test_every_parameterisation_recovers_the_data_through_every_sampler(
    name, prediction, diffused, schedule_name
):
    from cascade.degradations import bicubic_degrade, upsample_condition
    from cascade.denoiser import Parameterization

    generator = torch.Generator().manual_seed(5)
    image = torch.rand(1, 3, 16, 16, generator=generator) * 1.6 - 0.8
    low_res = bicubic_degrade(image, 4)
    scale = 4.0
    clean = (
        image if diffused == "image" else scale * (image - upsample_condition(low_res, (16, 16)))
    )
    model = Parameterization(RawOracle(clean, prediction), prediction, diffused, scale)
    gens = generators([3])
    out = sample(
        model,
        randn_like(image, gens),
        SCHEDULES[schedule_name].build(),
        StageRun(name, 20),
        cond={"low_res": low_res},
        generator=gens,
    )
    out = model.to_image(out, low_res)
    # Ancestral samplers add posterior noise at every step; at the end it is tiny. `ddpm` (SR3's
    # Algorithm 2) adds the larger beta_t variance and never clips.
    tolerance = {"ddim": 5e-3, "dpmpp_2m": 5e-3, "ancestral": 0.1, "ddpm": 0.25}[name]
    assert (out - image).abs().max() < tolerance


class GaussianOracle:
    """The exact denoiser for data x_0 ~ N(mu, sigma^2) per pixel: E[x_0 | x_t] is linear in
    x_t, and it changes with t (unlike a single-image oracle), so solver order shows."""

    def __init__(self, mu: float, sigma: float):
        self.mu, self.sigma = mu, sigma

    def x0(self, x, acp):
        a, var = acp.sqrt(), self.sigma**2
        return self.mu + a * var / (acp * var + 1 - acp) * (x - a * self.mu)

    def __call__(self, x, t, schedule, cond):
        from cascade.denoiser import Prediction

        acp = schedule.alphas_cumprod.to(x.dtype)[t].view(-1, 1, 1, 1)
        return Prediction(eps=(x - acp.sqrt() * self.x0(x, acp)) / (1 - acp).sqrt())

    def flow(self, x_top, acp_top, acp_end):
        """The probability-flow ODE solution: the standardised deviation is carried along."""
        spread = lambda acp: (acp * self.sigma**2 + 1 - acp).sqrt()  # noqa: E731
        return acp_end.sqrt() * self.mu + spread(acp_end) * (
            x_top - acp_top.sqrt() * self.mu
        ) / spread(acp_top)


@pytest.mark.parametrize("schedule_name", sorted(SCHEDULES))
def test_dpmpp_2m_error_falls_with_steps(schedule_name):
    """DPM-Solver++(2M)'s first-order last step: with an exact denoiser its error falls
    monotonically with the step count (a second-order step into index 0 made it grow on the SR3
    schedule, whose last step is ~10x longer than the one before)."""
    # One sigma per pixel over a range of scales, as in images: a single scale can hide the
    # error behind a cancellation at one step count.
    sigma = torch.linspace(0.05, 0.3, 3 * 8 * 8, dtype=torch.float64).view(1, 3, 8, 8)
    oracle = GaussianOracle(0.1, sigma)
    schedule = SCHEDULES[schedule_name].build()
    errors = []
    for steps in (10, 20, 50, 100):
        spaced = schedule.respace(steps)
        gens = generators([3, 4])
        x_top = randn_like(torch.empty(2, 3, 8, 8, dtype=torch.float64), gens)
        acp = spaced.alphas_cumprod
        exact = oracle.x0(oracle.flow(x_top, acp[-1], acp[0]), acp[0])
        out = sample(oracle, x_top, schedule, StageRun("dpmpp_2m", steps), cond={}, generator=gens)
        errors.append(float((out - exact).square().mean().sqrt()))
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 5e-3, errors


def test_the_self_ensemble_is_the_mean_of_eight_views_each_from_its_own_noise(sr_model):
    """`ensemble_estimate` averages the clean estimates of the input's eight flips and
    rotations, view k from its own x_T, each turned back; given one x_T for every view, turning
    the input turns its result (to float rounding), which a single estimate of a network with
    no such symmetry does not do."""
    from cascade.samplers import DIHEDRAL, denoise_once, ensemble_estimate

    schedule = sr_model.spec.schedule.build()
    gen = torch.Generator().manual_seed(0)
    low_res = torch.rand(1, 3, 16, 24, generator=gen) * 2 - 1  # not square: turns swap sides
    noises = [torch.randn(1, 3, 64, 96, generator=gen) for _ in range(8)]
    cond = {"low_res": low_res, "aug_level": torch.zeros(1)}
    model = sr_model.denoiser
    ens = ensemble_estimate(model, noises, schedule, cond=cond)
    assert ens.shape == noises[0].shape and len(set(DIHEDRAL)) == 8
    by_hand = torch.zeros_like(ens)
    for (turns, flip), noise in zip(DIHEDRAL, noises, strict=True):

        def view(t, turns=turns, flip=flip):
            t = torch.rot90(t, turns, (-2, -1))
            return t.flip(-1) if flip else t

        turned = {"low_res": view(low_res), "aug_level": cond["aug_level"]}
        out = denoise_once(model, view(noise), schedule, cond=turned)
        out = out.flip(-1) if flip else out
        by_hand += torch.rot90(out, -turns, (-2, -1))
    torch.testing.assert_close(ens, by_hand / 8, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="8 views need 8 x_T"):
        ensemble_estimate(model, noises[:1], schedule, cond=cond)

    def turn(t):
        return torch.rot90(t, 1, (-2, -1))

    x = noises[0]
    shared = ensemble_estimate(model, [x] * 8, schedule, cond=cond)
    turned = {"low_res": turn(low_res), "aug_level": cond["aug_level"]}
    torch.testing.assert_close(
        ensemble_estimate(model, [turn(x)] * 8, schedule, cond=turned),
        turn(shared),
        atol=1e-5,
        rtol=0,
    )
    single = denoise_once(model, x, schedule, cond=cond)
    single_turned = denoise_once(model, turn(x), schedule, cond=turned)
    assert (single_turned - turn(single)).abs().max() > 1e-3


def test_fidelity_one_is_the_self_ensembled_estimate_and_other_fidelities_the_single_one(
    sr_model,
):
    from cascade.samplers import denoise_once, ensemble_estimate, sample_with_fidelity

    schedule = sr_model.spec.schedule.build()
    low_res = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(1)) * 2 - 1
    cond = {"low_res": low_res, "aug_level": torch.zeros(1)}
    model = sr_model.denoiser
    fixed = generators([0])  # the fixed x_T's source: its first eight draws, one per view
    x_tops = [randn_like(torch.empty(1, 3, 64, 64), fixed) for _ in range(8)]
    calls = []

    def counted(*args):
        calls.append(1)
        return model(*args)

    def run(fidelity):
        return sample_with_fidelity(
            counted,
            torch.empty(1, 3, 64, 64),
            schedule,
            StageRun("ddim", 4),
            fidelity,
            cond=cond,
            generator=generators([5]),
        )

    out = run(1.0)
    assert len(calls) == 8
    torch.testing.assert_close(out, ensemble_estimate(model, x_tops, schedule, cond=cond))
    # Below fidelity 1 the restart (and the low band) start from the one-call estimate, from
    # the first draw.
    calls.clear()
    run(0.5)
    assert len(calls) == 1 + 4
    assert not torch.allclose(denoise_once(model, x_tops[0], schedule, cond=cond), out)


@pytest.mark.parametrize("name", ALL)
def test_one_step_from_a_restart_is_taken_at_the_restart(sr_model, name):
    """steps=1 below fidelity 1: the one step denoises from the restart's noise level (a plain
    respacing to one step would keep only step 0 and return the noised estimate)."""
    from cascade.samplers import sample_with_fidelity

    schedule = sr_model.spec.schedule.build()
    low_res = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(2)) * 2 - 1
    cond = {"low_res": low_res, "aug_level": torch.zeros(1)}
    seen = []

    def recording(x, t, sched, c):
        seen.append(int(sched.timesteps[t[0]]) if len(sched) != len(schedule) else int(t[0]))
        return sr_model.denoiser(x, t, sched, c)

    for fidelity in (0.5, 0.945):
        seen.clear()
        sample_with_fidelity(
            recording,
            torch.empty(1, 3, 64, 64),
            schedule,
            StageRun(name, 1),
            fidelity,
            cond=cond,
            generator=generators([3]),
        )
        restart = round((1 - fidelity) * (len(schedule) - 1))
        assert seen == [len(schedule) - 1, restart], seen
