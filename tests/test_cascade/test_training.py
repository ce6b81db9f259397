"""Training: SR3 loss parity, noise levels, learning, exact resume, bad data, the CLI."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from pathlib import Path

import pytest
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from synthetic import write_images

from cascade import cli, training
from cascade.checkpoints import load_model
from cascade.datasets import load_class_folder, load_image_folder
from cascade.losses import adm_loss, continuous_noise_level, sr3_loss
from cascade.schedule import ScheduleConfig
from cascade.sr3 import SR3Config, SR3UNet
from cascade.training import SRBatch, TrainConfig, Trainer


def sr_config(data: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(
        "sr256", "sr256-tiny", str(data), batch_size=2, lr=1e-3, warmup=2, crop=32, ema=0.9
    )
    return dataclasses.replace(base, **changes)


def base_config(data: Path, **changes: object) -> TrainConfig:
    base = TrainConfig(
        "base64", "base64-tiny", str(data), batch_size=2, lr=1e-3, warmup=2, crop=16, ema=0.9
    )
    return dataclasses.replace(base, **changes)


@pytest.fixture
def sr_data(tmp_path: Path) -> Path:
    write_images(tmp_path / "sr")
    return tmp_path / "sr"


@pytest.fixture
def base_data(tmp_path: Path) -> Path:
    for name in ("tench", "goldfish"):
        write_images(tmp_path / "base" / name, 2, size=40)
    return tmp_path / "base"


def test_sr3_loss_matches_reference(parity_dir: Path, sr3_config: dict) -> None:
    io = load_file(parity_dir / "sr3" / "io.safetensors")
    network = SR3UNet(SR3Config.from_reference_kwargs(sr3_config["unet_kwargs"])).eval()
    network.load_state_dict(load_file(parity_dir / "sr3" / "unet_state_dict.safetensors"))
    args = (network, io["train.HR"], io["train.SR"], io["train.sqrt_gamma"], io["train.noise"])
    with torch.no_grad():
        total = sr3_loss(*args, reduction="sum")
        mean = sr3_loss(*args, reduction="mean")
        l2 = sr3_loss(*args, loss="l2")
    torch.testing.assert_close(total, io["train.loss_sum"][0], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(mean, io["train.loss_mean"][0], rtol=1e-5, atol=1e-7)
    expected_l2 = (io["train.eps_pred"] - io["train.noise"]).square().mean()
    torch.testing.assert_close(l2, expected_l2, rtol=1e-4, atol=1e-6)


def test_continuous_noise_level_lies_between_consecutive_levels() -> None:
    schedule = ScheduleConfig("sr3", "linear", 100, 1e-6, 1e-2).build()
    table = schedule.sqrt_alphas_cumprod_prev
    t = torch.tensor([1, 2, 50, 100, 100, 7])
    level = continuous_noise_level(schedule, t, torch.Generator().manual_seed(0))
    assert level.shape == (6, 1) and level.dtype == torch.float32
    low, high = table[t].float(), table[t - 1].float()
    assert bool((level[:, 0] >= low).all()) and bool((level[:, 0] <= high).all())
    with pytest.raises(ValueError, match="1..100"):
        continuous_noise_level(schedule, torch.tensor([0]), torch.Generator())
    with pytest.raises(ValueError, match="1..100"):
        continuous_noise_level(schedule, torch.tensor([101]), torch.Generator())


def test_adm_loss_is_eps_mse() -> None:
    schedule = ScheduleConfig("adm", "cosine", 1000).build()

    class Echo(torch.nn.Module):
        """Predicts x_t itself, so the loss has a closed form."""

        def forward(self, x, t, y=None):
            return x

    x0, noise = torch.randn(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
    t = torch.tensor([0, 999])
    loss = adm_loss(Echo(), x0, None, t, noise, schedule)
    a = schedule.alphas_cumprod[t].float().view(-1, 1, 1, 1)
    expected = (a.sqrt() * x0 + (1 - a).sqrt() * noise - noise).square().mean()
    torch.testing.assert_close(loss, expected)


PARAMETERISATIONS = [
    ("sr", "eps", "image"),
    ("sr", "v", "image"),
    ("sr", "x0", "image"),
    ("sr", "eps", "residual"),
    ("sr", "v", "residual"),
    ("sr", "x0", "residual"),
    ("base", "eps", "image"),
    ("base", "v", "image"),
    ("base", "x0", "image"),
]


@pytest.mark.parametrize(("kind", "prediction", "diffused"), PARAMETERISATIONS)
def test_training_steps_lower_the_loss_on_a_fixed_batch(
    kind: str, prediction: str, diffused: str, sr_data: Path, base_data: Path
) -> None:
    if kind == "sr":
        config = sr_config(sr_data, lr=2e-3)
        trainer = Trainer(config, load_image_folder(sr_data, 32))
    else:
        config = base_config(base_data, lr=2e-3, label_dropout=0.0)
        trainer = Trainer(config, load_class_folder(base_data, 16))
    trainer.spec = dataclasses.replace(
        trainer.spec, prediction=prediction, diffused=diffused, residual_scale=4.0
    )
    batch = trainer.draw_batch()
    trainer.network.eval()  # no dropout in the before/after comparison
    with torch.no_grad():
        before = float(trainer.loss(batch))
    trainer.network.train()
    for _ in range(15):
        trainer.train_step(batch)
    trainer.network.eval()
    with torch.no_grad():
        after = float(trainer.loss(batch))
    assert after < 0.9 * before, (before, after)


def test_sr_batch_shapes(sr_data: Path) -> None:
    trainer = Trainer(sr_config(sr_data, batch_size=3), load_image_folder(sr_data, 32))
    batch = trainer.draw_batch()
    assert isinstance(batch, SRBatch)
    assert batch.hr.shape == batch.condition.shape == batch.noise.shape == (3, 3, 32, 32)
    assert batch.hr.min() >= -1 and batch.hr.max() <= 1
    assert batch.sqrt_gamma.shape == (3, 1) and batch.aug_level.shape == (3,)
    assert bool((batch.sqrt_gamma > 0).all()) and bool((batch.sqrt_gamma <= 1).all())


def _params(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {
        **{f"net.{k}": v.clone() for k, v in trainer.network.state_dict().items()},
        **{f"ema.{k}": v.clone() for k, v in trainer.ema.state_dict().items()},
    }


@pytest.mark.parametrize("kind", ["sr", "base"])
def test_resume_takes_exactly_the_uninterrupted_next_step(
    kind: str, sr_data: Path, base_data: Path, tmp_path: Path
) -> None:
    def fresh() -> Trainer:
        if kind == "sr":
            return Trainer(sr_config(sr_data), load_image_folder(sr_data, 32))
        # base64-tiny has dropout: the global RNG state must be restored as well.
        return Trainer(base_config(base_data), load_class_folder(base_data, 16))

    steps = 3
    straight = fresh()
    losses = [straight.train_step(straight.draw_batch()) for _ in range(steps + 1)]

    first = fresh()
    for _ in range(steps):
        first.train_step(first.draw_batch())
    first.save(tmp_path / "run")
    torch.manual_seed(12345)  # whatever happens in between must not matter
    resumed = fresh()
    resumed.load_state_dict(torch.load(tmp_path / "run" / "train_state.pt", weights_only=True))
    assert resumed.step == steps
    loss = resumed.train_step(resumed.draw_batch())

    assert loss == losses[-1]
    expected, got = _params(straight), _params(resumed)
    for key, value in expected.items():
        torch.testing.assert_close(got[key], value, rtol=0, atol=1e-6, msg=key)


def test_training_runs_despite_bad_files(sr_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    (sr_data / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    Image.new("RGB", (16, 16)).save(sr_data / "tiny.png")
    with caplog.at_level(logging.WARNING):
        bank = load_image_folder(sr_data, 32)
        trainer = Trainer(sr_config(sr_data), bank)
        assert math.isfinite(trainer.train_step(trainer.draw_batch()))
    assert len(bank) == 6
    text = caplog.text
    assert "corrupt.jpg" in text and "tiny.png" in text


def test_config_and_crop_errors_are_clear(sr_data: Path) -> None:
    with pytest.raises(ValueError, match="ema decay"):
        sr_config(sr_data, ema=1.0)
    with pytest.raises(ValueError, match="unknown degradation 'jpeg'; choose one of .*'mixed'"):
        sr_config(sr_data, degradation="jpeg")
    bank = load_image_folder(sr_data, 32)
    with pytest.raises(ValueError, match="multiple of 8"):
        Trainer(sr_config(sr_data, crop=36), bank)
    with pytest.raises(ValueError, match="cannot train sr256"):
        Trainer(sr_config(sr_data, preset="base64-tiny"), bank)


def _train(data: Path, out: Path, steps: int, *extra: str) -> None:
    cli.main(
        [
            "train",
            "--stage",
            "sr256",
            "--preset",
            "sr256-tiny",
            "--data",
            str(data),
            "--out",
            str(out),
            "--steps",
            str(steps),
            "--batch-size",
            "1",
            "--warmup",
            "1",
            "--sample-every",
            "2",
            "--save-every",
            "2",
            *extra,
        ]
    )


def test_cli_train_writes_a_loadable_model_samples_and_resumes_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Native crop (256): the stage's real configuration, on two 264-pixel images. The grids'
    # layout is what is checked, not their quality: two sampling steps instead of 50.
    monkeypatch.setattr(training, "SAMPLE_RUN", dataclasses.replace(training.SAMPLE_RUN, steps=2))
    data = tmp_path / "data"
    write_images(data, 3, size=264)
    _train(data, tmp_path / "a", 3, "--hold-out", "1")
    model = load_model(tmp_path / "a" / "model.safetensors")
    assert model.spec.image_size == 256 and not model.random_weights
    with safe_open(str(tmp_path / "a" / "model.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["training.step"] == "3" and meta["training.preset"] == "sr256-tiny"
    assert meta["training.data"] == str(data) and float(meta["training.loss"]) > 0
    for step in (2, 3):
        with Image.open(tmp_path / "a" / "samples" / f"step_{step}.png") as grid:
            assert grid.size == (3 * 256, 2 * 256)  # input | model | truth, one row per image

    _train(data, tmp_path / "b", 2, "--hold-out", "1")
    _train(data, tmp_path / "b", 3, "--resume", str(tmp_path / "b" / "train_state.pt"))
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=1e-6, msg=key)


def test_cli_train_reports_an_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as exit_info:
        _train(tmp_path / "empty", tmp_path / "out", 1)
    assert exit_info.value.code == 2
    assert "error: no image files in" in capsys.readouterr().err


def test_residual_v_loss_targets() -> None:
    """v = sqrt(g) eps - sqrt(1-g) r with r = k (hr - condition): an echo of the exact target
    scores zero."""

    class Exact(torch.nn.Module):
        config = SR3Config(inner_channels=4, norm_groups=2, channel_mults=(1,), image_size=8)

        def __init__(self, value: torch.Tensor) -> None:
            super().__init__()
            self.value = value

        def forward(self, x: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
            return self.value

    generator = torch.Generator().manual_seed(0)
    hr, condition, noise = (torch.randn(2, 3, 8, 8, generator=generator) for _ in range(3))
    level = torch.tensor([0.3, 0.9])
    a = level.view(-1, 1, 1, 1)
    v = a * noise - (1 - a**2).sqrt() * 4.0 * (hr - condition)
    args = (hr, condition, level, noise)
    assert float(sr3_loss(Exact(v), *args, prediction="v", residual_scale=4.0)) < 1e-6
    assert float(sr3_loss(Exact(v), *args, prediction="v")) > 0.1  # image, not residual


def test_init_starts_a_fresh_run_from_the_checkpoint_weights(sr_data: Path, tmp_path: Path) -> None:
    bank = load_image_folder(sr_data, 32)
    first = Trainer(sr_config(sr_data), bank)
    for _ in range(2):
        first.train_step(first.draw_batch())
    first.save(tmp_path / "first")  # model.safetensors holds the EMA weights
    saved = load_file(tmp_path / "first" / "model.safetensors")

    tuned = Trainer(sr_config(sr_data, init=str(tmp_path / "first" / "model.safetensors")), bank)
    assert tuned.step == 0 and not tuned.optimizer.state  # fresh optimizer and warm-up
    for name, value in tuned.network.state_dict().items():
        torch.testing.assert_close(value, saved[name], rtol=0, atol=0, msg=name)
        torch.testing.assert_close(tuned.ema.state_dict()[name], saved[name], rtol=0, atol=0)
    # The first step's EMA averages the trained weights in at the full decay (0.9), no warm-up.
    tuned.train_step(tuned.draw_batch())
    network = tuned.network.state_dict()
    for name, value in tuned.ema.state_dict().items():
        if value.is_floating_point():
            expected = 0.9 * saved[name] + 0.1 * network[name]
            torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=name)


def test_init_from_another_architecture_is_refused(sr_data: Path, tmp_path: Path) -> None:
    bank = load_image_folder(sr_data, 32)
    Trainer(sr_config(sr_data), bank).save(tmp_path / "tiny")
    init = str(tmp_path / "tiny" / "model.safetensors")
    with pytest.raises(ValueError, match="same preset"):
        Trainer(sr_config(sr_data, preset="sr256-small", init=init), bank)


def test_cli_init_with_mixed_degradation_records_both_and_resumes_exactly(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_images(data, 3, size=40)
    crop = ("--crop", "32", "--sample-every", "0")  # the grids are tested above
    _train(data, tmp_path / "base", 2, *crop)
    init = str(tmp_path / "base" / "model.safetensors")
    tuned = ("--init", init, "--degradation", "mixed", *crop)
    _train(data, tmp_path / "a", 3, *tuned)
    _train(data, tmp_path / "b", 2, *tuned)
    _train(data, tmp_path / "b", 3, "--resume", str(tmp_path / "b" / "train_state.pt"))
    with safe_open(str(tmp_path / "a" / "model.safetensors"), framework="pt") as handle:
        meta = handle.metadata()
    assert meta["training.init"] == init and meta["training.step"] == "3"
    assert meta["training.degradation"] == "mixed"
    assert json.loads(meta["training.config"])["init"] == init
    mixture = json.loads(meta["training.degradation_mixture"])
    assert set(mixture) == {"bicubic", "web", "realistic"}
    assert sum(mixture.values()) == pytest.approx(1.0)
    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    base = load_file(init)
    assert any(not torch.equal(a[key], base[key]) for key in a)  # it trained
    for key, value in a.items():
        torch.testing.assert_close(b[key], value, rtol=0, atol=1e-6, msg=key)


def test_cli_init_and_resume_together_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    write_images(tmp_path / "data", 2, size=40)
    with pytest.raises(SystemExit):
        _train(tmp_path / "data", tmp_path / "out", 1, "--init", "x", "--resume", "y")
    assert "give only one" in capsys.readouterr().err
