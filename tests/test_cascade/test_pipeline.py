"""The cascade: stage plans, sizes, seeds, guidance policy, colour fixes (tiled upscales are
test_tiling.py's)."""

from __future__ import annotations

import pytest
import torch

from cascade.chain import Cascade
from cascade.checkpoints import load
from cascade.denoiser import Prediction
from cascade.pipeline import DEFAULT_WEIGHTS, Stage, StageError
from cascade.schedule import ScheduleConfig
from cascade.stages import DEFAULT_FIDELITY, StageRun, stage_seed

FAST = {name: StageRun("ddim", 2) for name in ("base64", "sr256", "sr1024")}


@pytest.fixture(scope="module")
def cascade():
    return Cascade.load(DEFAULT_WEIGHTS)  # the tiny random presets


@pytest.mark.parametrize(
    "size,stages",
    [(64, ["base64"]), (256, ["base64", "sr256"]), (1024, ["base64", "sr256", "sr1024"])],
)
def test_generate_sizes(cascade, size, stages):
    result = cascade.generate([1], size, [5], runs=FAST)
    assert list(result.images) == stages
    for name, image in result.images.items():
        side = {"base64": 64, "sr256": 256, "sr1024": 1024}[name]
        assert image.shape == (1, 3, side, side)
        assert image.min() >= -1 and image.max() <= 1
    assert result.final.shape[-1] == size


def test_generate_is_reproducible_and_batch_independent(cascade):
    first = cascade.generate([1, 2], 256, [5, 6], runs=FAST)
    again = cascade.generate([2], 256, [6], runs=FAST)
    torch.testing.assert_close(first.images["sr256"][1:], again.images["sr256"], atol=1e-3, rtol=0)
    assert not torch.allclose(first.images["base64"][0], first.images["base64"][1])


def test_sizes_and_plans(cascade):
    with pytest.raises(StageError, match="size must be one of"):
        cascade.plan_generation(512)
    assert [s.name for s in cascade.plan_upscale(64, 64, 4)] == ["sr256"]
    assert [s.name for s in cascade.plan_upscale(256, 256, 4)] == ["sr1024"]
    assert [s.name for s in cascade.plan_upscale(64, 64, 16)] == ["sr256", "sr1024"]
    assert [s.name for s in cascade.plan_upscale(90, 70, 4)] == ["sr256"]
    with pytest.raises(StageError, match="scale must be one of"):
        cascade.plan_upscale(64, 64, 3)


def test_upscale_any_size_with_tiling(cascade):
    # 150 x 100 -> sr1024 territory is 256; 100x60 is nearer 64: sr256 tiled over 256 tiles.
    image = torch.rand(1, 3, 100, 60) * 2 - 1
    result = cascade.upscale(
        image, [3], runs={name: StageRun("ddim", 2, color_fix="adain") for name in FAST}
    )
    assert result.final.shape == (1, 3, 400, 240)
    sixteen = cascade.upscale(torch.rand(1, 3, 64, 64) * 2 - 1, [3], scale=16, runs=FAST)
    assert sixteen.final.shape == (1, 3, 1024, 1024)


def test_guidance_needs_a_null_class():
    native = Stage("base64", load("preset:base64-tiny"), FAST["base64"])
    guided = StageRun("ddim", 2, guidance=3.0)
    out = native.run(seeds=[1], class_ids=[3], run=guided)
    assert out.shape == (1, 3, 64, 64)
    adm_like = load("preset:base64-tiny")
    adm_like.spec = type(adm_like.spec)(**{**adm_like.spec.__dict__, "null_class": None})
    with pytest.raises(StageError, match="no null class|has none"):
        Stage("base64", adm_like, FAST["base64"]).run(seeds=[1], class_ids=[3], run=guided)


def test_class_ids_validated():
    stage = Stage("base64", load("preset:base64-tiny"), FAST["base64"])
    with pytest.raises(StageError, match="out of range"):
        stage.run(seeds=[1], class_ids=[1000])  # 1000 is the null class, not a request


def test_stage_seeds_differ_per_stage():
    seeds = {stage_seed(7, name) for name in ("base64", "sr256", "sr1024")}
    assert len(seeds) == 3 and stage_seed(7, "base64") == 7


def test_fidelity_one_is_the_same_image_for_every_seed():
    stage = Stage("sr256", load("preset:sr256-tiny"), StageRun("dpmpp_2m", 3))
    low = torch.rand(1, 3, 16, 16) * 2 - 1
    faithful = StageRun("dpmpp_2m", 3, fidelity=1.0)
    first = stage.run(seeds=[1], low_res=low, run=faithful)
    other = stage.run(seeds=[2], low_res=low, run=faithful)
    assert torch.equal(first, other)
    half = StageRun("dpmpp_2m", 3, fidelity=0.5)
    sampled = [stage.run(seeds=[seed], low_res=low, run=half) for seed in (1, 2)]
    assert not torch.equal(sampled[0], sampled[1])
    assert stage.default_fidelity == DEFAULT_FIDELITY["sr256"]  # a residual model's default
    sr1024 = Stage("sr1024", load("preset:sr1024-tiny"))
    assert sr1024.default_fidelity == DEFAULT_FIDELITY["sr1024"]  # each stage its own
    assert sr1024.effective().fidelity == DEFAULT_FIDELITY["sr1024"]
    with pytest.raises(ValueError, match="fidelity must lie in"):
        StageRun("dpmpp_2m", 3, fidelity=1.5)


def test_fidelity_trades_detail_for_faithfulness_monotonically():
    """With an exact denoiser of a known image set (the posterior is spread over two images),
    lower fidelity restarts from more noise: its output moves further from the faithful
    (mean) output, on average over seeds."""
    from cascade.samplers import sample_with_fidelity

    images = torch.stack([torch.full((3, 8, 8), 0.5), torch.full((3, 8, 8), -0.5)])

    def two_point(x, t, schedule, cond):
        acp = schedule.alphas_cumprod.to(x.dtype)[t].view(-1, 1, 1, 1)
        a, s = acp.sqrt(), (1 - acp).sqrt()
        distance = ((x[:, None] - a[:, None] * images[None]) ** 2).flatten(2).sum(-1)
        weights = torch.softmax(-distance / (2 * s.view(-1, 1) ** 2), dim=1)
        x0 = torch.einsum("bk,kchw->bchw", weights, images)
        return Prediction(eps=(x - a * x0) / s)

    schedule = ScheduleConfig("sr3", "linear", 2000, 1e-6, 1e-2).build()
    distances = []
    for fidelity in (1.0, 0.9, 0.5, 0.0):
        spread = []
        for seed in range(8):
            gens = [torch.Generator().manual_seed(seed)]
            x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(100 + seed))
            out = sample_with_fidelity(
                two_point,
                x,
                schedule,
                StageRun("ddim", 20),
                fidelity,
                cond={},
                generator=gens,
            )
            spread.append(float(out.abs().mean()))  # the mean output is ~0, samples are +-0.5
        distances.append(sum(spread) / len(spread))
    assert distances[0] < 0.05
    assert distances == sorted(distances), distances
    assert distances[-1] > 0.45


def test_upscales_keep_the_faithful_estimates_low_band_by_default():
    """A residual upscaler's default: below the input's Nyquist the output is fidelity 1's, above
    it the sample's. `low_band="sample"` is plain SDEdit; eps-on-image (released) weights default
    to it, and a generation has no low band."""
    import dataclasses

    from cascade.bands import high_pass
    from cascade.samplers import denoise_once, randn_like
    from cascade.tiling import PositionNoise

    stage = Stage("sr256", load("preset:sr256-tiny"), StageRun("dpmpp_2m", 3))
    assert stage.effective().low_band == "estimate" and stage.describe()["low_band"] == "estimate"
    # A faint input keeps the tiny random model's outputs inside [-1, 1], so no clamp hides them.
    low = torch.rand(1, 3, 16, 16) * 0.2 - 0.1
    # The one-call clean estimate from the fixed x_T (seed 0's position-keyed noise; fidelity 1
    # itself averages eight such estimates over the input's flips and rotations).
    denoiser = stage.upscale_denoiser()
    x_top = randn_like(torch.empty(1, 3, 64, 64), PositionNoise([0], 0, 0))
    cond = {"low_res": low, "aug_level": torch.zeros(1)}
    schedule = stage.model.spec.schedule.build()
    faithful = denoiser.to_image(denoise_once(denoiser, x_top, schedule, cond=cond), low)
    for fidelity in (0.5, 0.0):
        kept = stage.run(seeds=[1], low_res=low, run=StageRun("dpmpp_2m", 3, fidelity=fidelity))
        plain = stage.run(
            seeds=[1],
            low_res=low,
            run=StageRun("dpmpp_2m", 3, fidelity=fidelity, low_band="sample"),
        )
        assert kept.abs().max() < 1 and plain.abs().max() < 1
        assert not torch.allclose(kept, plain, atol=1e-3)
        # The band edge of a 4x upscale runs 0.2-0.3 of Nyquist; compare wholly on either side.
        torch.testing.assert_close(
            high_pass(kept, 0.375), high_pass(plain, 0.375), atol=1e-4, rtol=0
        )
        below = kept - high_pass(kept, 0.15)
        torch.testing.assert_close(below, faithful - high_pass(faithful, 0.15), atol=1e-4, rtol=0)
    released = dataclasses.replace(
        stage.model, spec=dataclasses.replace(stage.model.spec, prediction="eps", diffused="image")
    )
    assert Stage("sr256", released).effective().low_band == "sample"
    base = Stage("base64", load("preset:base64-tiny"))
    assert base.effective(StageRun(low_band="estimate")).low_band is None
    with pytest.raises(ValueError, match="unknown low band"):
        StageRun(low_band="middle")  # type: ignore[arg-type]


def test_cpu_fast_path_is_channels_last_and_samples_the_same_images():
    low = torch.rand(1, 3, 16, 16) * 2 - 1
    plain = Stage("sr256", load("preset:sr256-tiny"), StageRun("ddim", 3))
    fast = Stage("sr256", load("preset:sr256-tiny"), StageRun("ddim", 3)).optimize()
    weight = next(p for p in fast.model.network.parameters() if p.ndim == 4)
    assert weight.is_contiguous(memory_format=torch.channels_last)
    assert not weight.is_contiguous()  # NHWC strides, not NCHW
    expected = plain.run(seeds=[3], low_res=low)
    torch.testing.assert_close(fast.run(seeds=[3], low_res=low), expected, atol=1e-4, rtol=0)
    nchw = Stage("sr256", load("preset:sr256-tiny")).optimize(channels_last=False)
    assert next(p for p in nchw.model.network.parameters() if p.ndim == 4).is_contiguous()
