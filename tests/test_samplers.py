"""Samplers over the denoiser contract: shapes, determinism, batching, cancellation."""

from __future__ import annotations

import pytest
import torch

from cascade.checkpoints import load
from cascade.samplers import (
    SAMPLERS,
    SamplerSettings,
    SamplingCanceled,
    generators,
    randn_like,
    sample,
)
from cascade.schedule import ScheduleConfig

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
    settings = SamplerSettings(name, steps=4, eta=1.0 if name == "ddim" else 0.0)
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
        SamplerSettings("dpmpp_2m", steps),
        [0],
        torch.zeros(1, 3, 16, 16),
        callback=lambda step, total, x0: calls.append((step, total)),
    )
    assert calls == [(k, steps) for k in range(1, steps + 1)]


def test_steps_beyond_schedule_refused(sr_model):
    with pytest.raises(ValueError, match="steps must be <= 2000"):
        _run(sr_model, SamplerSettings("ddim", 2001), [0], torch.zeros(1, 3, 16, 16))
    with pytest.raises(ValueError, match="unknown sampler"):
        SamplerSettings("euler", 10)


@pytest.mark.parametrize("name", ALL)
def test_callback_cancels_within_one_step(sr_model, name):
    seen = []

    def cancel_at_two(step, total, x0):
        seen.append(step)
        assert x0.shape == (1, 3, 64, 64)
        if step == 2:
            raise SamplingCanceled

    with pytest.raises(SamplingCanceled):
        _run(sr_model, SamplerSettings(name, 10), [0], torch.zeros(1, 3, 16, 16), cancel_at_two)
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
        SamplerSettings(name, 20),
        cond={},
        generator=gens,
    )
    # Ancestral samplers add posterior noise at every step; at the end it is tiny.
    tolerance = 5e-3 if name in ("ddim", "dpmpp_2m") else 0.1
    assert (out - x0).abs().max() < tolerance
