"""The JPEG pre-clean (cascade.deblock): the file's quality read from its tables, the network,
its training, and where the cascade applies it (the first stage's input, JPEG files only)."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
import torch
from PIL import Image

from cascade import deblock
from cascade.chain import Cascade
from cascade.checkpoints import CheckpointError, model_from_preset, save_model
from cascade.deblock import QUALITY_RANGE, DeblockConfig, Deblocker, applies, clean
from cascade.deblock_train import compress, psnr_gain
from cascade.deblock_train import main as train_main
from cascade.degradations import file_jpeg_quality
from cascade.evaluation import evaluate
from cascade.formats import Carried, jpeg_quality, read_image
from cascade.pipeline import Stage, load_stage
from cascade.stages import StageRun


def encoded(array: np.ndarray, format: str, **options: object) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **options)
    return buffer.getvalue()


def texture(size: int = 48, seed: int = 0) -> np.ndarray:
    """Smooth gradients with a few edges: what JPEG blocks and rings on."""
    y, x = np.mgrid[0:size, 0:size]
    rng = np.random.default_rng(seed)
    base = np.stack([x * 4, y * 3, (x + y) * 2], -1) % 256
    edges = ((x // 11 + y // 7) % 2) * 60
    noise = rng.integers(0, 20, (size, size, 3))
    return np.clip(base + edges[..., None] + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("quality", [10, 30, 50, 75, 90, 95, 100])
def test_a_jpegs_quality_is_read_from_its_tables(quality):
    pixels, carried = read_image(encoded(texture(), "JPEG", quality=quality))
    assert carried.jpeg_quality == quality
    assert carried.describe()["jpeg_quality"] == quality
    with Image.open(io.BytesIO(encoded(texture(), "JPEG", quality=quality))) as image:
        assert jpeg_quality(image) == quality


def test_png_and_webp_inputs_have_no_jpeg_quality():
    for format, options in (("PNG", {}), ("WEBP", {"quality": 50})):
        _, carried = read_image(encoded(texture(), format, **options))
        assert carried.jpeg_quality is None and "jpeg_quality" not in carried.describe()


def test_the_quality_travels_with_what_the_upload_carries():
    carried = Carried("RGB", None, b"icc", None, 8, 62)
    assert Carried.from_bytes(carried.to_bytes()).jpeg_quality == 62
    assert Carried.from_bytes(Carried().to_bytes()).jpeg_quality is None


def test_which_qualities_are_cleaned():
    low, high = QUALITY_RANGE
    assert not applies(None) and not applies(high + 1) and not applies(100)
    assert applies(high) and applies(low) and applies(low - 20)


def test_an_untrained_network_is_the_identity_and_keeps_the_dtype():
    network = Deblocker(DeblockConfig(width=8, blocks=1))
    x = torch.rand(2, 3, 21, 17) * 2 - 1  # odd sides: padded for the unshuffle, cropped back
    assert torch.allclose(clean(network, x, 50), x, atol=1e-6)
    assert clean(network, x, None) is x and clean(network, x, 99) is x
    uint8 = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8)
    out = clean(network, uint8, 40)
    assert out.dtype == torch.uint8 and torch.equal(out, uint8)


def test_tall_inputs_are_cleaned_in_bands_equal_to_the_whole(monkeypatch):
    torch.manual_seed(0)
    network = Deblocker(DeblockConfig(width=8, blocks=2))
    for parameter in network.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    x = torch.rand(1, 3, 100, 24) * 2 - 1
    whole = clean(network, x, 60)
    assert not torch.allclose(whole, x, atol=1e-3)  # the network does change it
    monkeypatch.setattr(deblock, "BAND_ROWS", 16)
    assert torch.allclose(clean(network, x, 60), whole, atol=1e-5)


def test_the_quality_conditions_the_network():
    torch.manual_seed(1)
    network = Deblocker(DeblockConfig(width=8, blocks=1))
    for parameter in network.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert not torch.allclose(clean(network, x, 30), clean(network, x, 90), atol=1e-4)
    # Below the trained range every quality is cleaned as the lowest.
    assert torch.equal(clean(network, x, 10), clean(network, x, QUALITY_RANGE[0]))


def test_saved_weights_load_back_and_other_files_are_refused(tmp_path):
    network = Deblocker(DeblockConfig(width=8, blocks=1))
    torch.nn.init.normal_(network.tail.weight, std=0.1)
    path = tmp_path / "deblock.safetensors"
    deblock.save(network, path, steps=7)
    loaded = deblock.load(path)
    assert loaded.config == DeblockConfig(width=8, blocks=1)
    assert deblock.read_metadata(path)["steps"] == 7
    x = torch.rand(1, 3, 16, 16) * 2 - 1
    assert torch.allclose(clean(loaded, x, 50), clean(network, x, 50))
    teacher = model_from_preset("sr256-tiny")
    other = tmp_path / "sr256.safetensors"
    save_model(other, teacher.spec, teacher.network.state_dict())
    with pytest.raises(ValueError, match="not a JPEG pre-clean"):
        deblock.load(other)
    with torch.no_grad():
        network.tail.bias[0] = float("nan")
    deblock.save(network, tmp_path / "nan.safetensors")
    with pytest.raises(ValueError, match="not finite"):
        deblock.load(tmp_path / "nan.safetensors")


def test_training_lifts_the_psnr_of_jpeg_crops(tmp_path):
    data = tmp_path / "photos"
    data.mkdir()
    for seed in range(3):
        Image.fromarray(texture(256, seed)).save(data / f"p{seed}.png")
    out = tmp_path / "deblock.safetensors"
    args = argparse.Namespace(
        data=str(data), out=str(out), steps=120, batch_size=8, crop=32, lr=2e-3, width=16,
        blocks=1, seed=0, max_minutes=None, resume=False, log_every=40,
    )  # fmt: skip
    torch.manual_seed(0)
    train_main(args)
    before, after = deblock.read_metadata(out)["check_psnr"]
    assert after > before + 0.3
    # Resuming continues from the state file, to the new step count.
    args.steps, args.resume = 140, True
    train_main(args)
    assert deblock.read_metadata(out)["steps"] == 140


def test_compress_is_a_real_jpeg_round_trip():
    image = torch.from_numpy(texture(32)).permute(2, 0, 1).float() / 127.5 - 1
    low = compress(image, 30)
    assert low.shape == image.shape and not torch.allclose(low, image, atol=0.02)
    # Quality 30 leaves its 8 px blocks: steps across block borders exceed those inside.
    luma = low.mean(0)
    steps = (luma[:, 1:] - luma[:, :-1]).abs().mean(0)
    at_borders = steps[7::8].mean()
    inside = torch.cat([steps[i::8] for i in range(7)]).mean()
    assert at_borders > inside
    network = Deblocker(DeblockConfig(width=8, blocks=1))
    batch = (low[None], image[None], torch.tensor([30.0]))
    jpeg_db, cleaned_db = psnr_gain(network, batch)
    assert jpeg_db == pytest.approx(cleaned_db)  # untrained: the identity


def brightening() -> Deblocker:
    """A pre-clean whose effect is plain to see: it adds 0.5 to every pixel."""
    network = Deblocker(DeblockConfig(width=8, blocks=1))
    with torch.no_grad():
        network.tail.bias.fill_(0.5)
    return network.eval()


def test_the_first_stage_cleans_a_jpeg_input_only(monkeypatch):
    stage = Stage("sr256", model_from_preset("sr256-tiny"))
    x = torch.zeros(1, 3, 16, 16)
    assert stage.prepare_input(x, 75) is x  # no pre-clean attached
    stage.deblocker = brightening()
    assert torch.allclose(stage.prepare_input(x, 75), x + 0.5)
    assert stage.prepare_input(x, None) is x and stage.prepare_input(x, 98) is x
    second = Stage("sr1024", model_from_preset("sr1024-tiny"), deblocker=brightening())
    cascade = Cascade([stage, second])
    seen = []
    original = Stage.run

    def spy(self, **kwargs):
        seen.append((self.name, float(kwargs["low_res"].mean())))
        return original(self, **kwargs)

    monkeypatch.setattr(Stage, "run", spy)
    runs = {name: StageRun("ddim", 1) for name in ("sr256", "sr1024")}
    result = cascade.upscale(x, [0], scale=16, runs=runs, jpeg_quality=60)
    assert seen[0] == ("sr256", pytest.approx(0.5))  # the file's stage sees it cleaned
    # The next stage takes the first one's output as it is, not cleaned again.
    assert seen[1] == ("sr1024", pytest.approx(float(result.images["sr256"].mean()), abs=1e-6))


def test_a_pre_clean_beside_the_weights_is_loaded_described_or_refused(tmp_path):
    teacher = model_from_preset("sr256-tiny")
    weights = tmp_path / "sr256.safetensors"
    save_model(weights, teacher.spec, teacher.network.state_dict())
    plain = load_stage("sr256", str(weights), "cpu", StageRun())
    assert plain.deblocker is None and "jpeg_preclean" not in plain.describe()
    deblock.save(brightening(), tmp_path / "deblock.safetensors")
    stage = load_stage("sr256", str(weights), "cpu", StageRun())
    assert stage.deblocker is not None
    assert stage.describe()["jpeg_preclean"] == {
        "weights": "deblock.safetensors",
        "qualities": list(QUALITY_RANGE),
    }
    (tmp_path / "deblock.safetensors").write_bytes(b"not weights")
    with pytest.raises(CheckpointError, match="JPEG pre-clean"):
        load_stage("sr256", str(weights), "cpu", StageRun())


class Recording:
    """A stand-in upscaler (bicubic-sized zeros) that records the qualities it is told."""

    scale = 4

    def __init__(self):
        self.qualities = []

    def run(self, *, seeds, low_res, run=None):
        return torch.zeros(1, 3, low_res.shape[-2] * 4, low_res.shape[-1] * 4)

    def prepare_input(self, low_res, jpeg_quality):
        self.qualities.append(jpeg_quality)
        return low_res


@pytest.mark.parametrize(
    "degradation, quality", [("jpeg75", 75), ("jpeg50", 50), ("bicubic", None), ("noise5", None)]
)
def test_eval_gives_the_model_what_the_service_makes_of_the_file(degradation, quality):
    assert file_jpeg_quality(degradation) == quality
    stage = Recording()
    images = [torch.from_numpy(texture(64)).permute(2, 0, 1).float() / 127.5 - 1]
    evaluate(stage, images, ["a"], seed=0, run=StageRun("ddim", 1), degradation=degradation)
    assert stage.qualities == [quality]


def test_the_self_ensemble_commutes_with_flips_and_turns():
    torch.manual_seed(2)
    network = Deblocker(DeblockConfig(width=8, blocks=1))
    for parameter in network.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    x = torch.rand(1, 3, 32, 24) * 2 - 1  # whole 8 px blocks: every view keeps the grid
    cleaned = clean(network, x, 50)
    assert torch.allclose(clean(network, x.flip(-1), 50), cleaned.flip(-1), atol=1e-5)
    turned = torch.rot90(x, 1, (-2, -1))
    assert torch.allclose(clean(network, turned, 50), torch.rot90(cleaned, 1, (-2, -1)), atol=1e-5)
    # One view is the plain network, which is not symmetric.
    single = clean(network, x, 50, views=1)
    assert not torch.allclose(clean(network, x.flip(-1), 50, views=1), single.flip(-1), atol=1e-4)
