"""SR3 UNet: numerical parity with the Janspiry reference fixtures and key layout checks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cascade.sr3 import SR3Config, SR3UNet, infer_sr3_config

TOL = {"atol": 1e-5, "rtol": 1e-5}

# Released configurations (ANATOMY.md section 1.2 / 3).
RELEASED = {
    "keys_sr_sr3_16_128.json": SR3Config(
        inner_channels=64,
        norm_groups=32,
        channel_mults=(1, 2, 4, 8, 8),
        attn_res=(16,),
        res_blocks=2,
        image_size=128,
    ),
    "keys_sr_sr3_64_512.json": SR3Config(
        inner_channels=64,
        norm_groups=16,
        channel_mults=(1, 2, 4, 8, 16),
        attn_res=(),
        res_blocks=1,
        image_size=512,
    ),
}


@pytest.fixture(scope="module")
def state_dict(parity_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(parity_dir / "sr3" / "unet_state_dict.safetensors")


@pytest.fixture(scope="module")
def io(parity_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(parity_dir / "sr3" / "io.safetensors")


@pytest.fixture
def config(sr3_config: dict) -> SR3Config:
    return SR3Config.from_reference_kwargs(sr3_config["unet_kwargs"])


@pytest.fixture
def model(config: SR3Config, state_dict: dict[str, torch.Tensor]) -> SR3UNet:
    net = SR3UNet(config).eval()
    net.load_state_dict(state_dict, strict=True)
    return net


def released_shapes(parity_dir: Path, name: str) -> dict[str, list[int]]:
    """UNet keys and shapes of a released checkpoint, `denoise_fn.` stripped, buffers dropped."""
    data = json.loads((parity_dir / "sr3" / name).read_text())
    prefix = "denoise_fn."
    unet = {k[len(prefix) :]: s for k, s in data["keys"] if k.startswith(prefix)}
    assert len(data["keys"]) - len(unet) == 12  # the schedule buffers
    return unet


def test_config_from_reference_kwargs(config: SR3Config) -> None:
    assert config == SR3Config(
        inner_channels=32,
        norm_groups=16,
        channel_mults=(1, 1, 2),
        attn_res=(8,),
        res_blocks=1,
        image_size=32,
    )
    with pytest.raises(ValueError, match="noise level embedding"):
        SR3Config.from_reference_kwargs({"with_noise_level_emb": False})


@torch.no_grad()
def test_forward_parity(model: SR3UNet, io: dict[str, torch.Tensor]) -> None:
    out = model(io["unet.x"], io["unet.noise_level"])
    torch.testing.assert_close(out, io["unet.out"], **TOL)


@torch.no_grad()
def test_embedding_parity(model: SR3UNet, io: dict[str, torch.Tensor]) -> None:
    level = io["unet.noise_level"]
    torch.testing.assert_close(model.noise_level_mlp[0](level), io["unet.pos_enc"], **TOL)
    torch.testing.assert_close(model.noise_level_mlp(level), io["unet.noise_emb"], **TOL)


@torch.no_grad()
def test_noise_level_shapes_agree(model: SR3UNet, io: dict[str, torch.Tensor]) -> None:
    x, level = io["unet.x"], io["unet.noise_level"]
    assert torch.equal(model(x, level), model(x, level.reshape(-1)))


@torch.no_grad()
def test_channels_last(model: SR3UNet, io: dict[str, torch.Tensor]) -> None:
    x = io["unet.x"].to(memory_format=torch.channels_last)
    out = model.to(memory_format=torch.channels_last)(x, io["unet.noise_level"])
    torch.testing.assert_close(out, io["unet.out"], atol=1e-5, rtol=1e-5)


def test_bad_spatial_size_raises(model: SR3UNet) -> None:
    with pytest.raises(ValueError, match="multiples of 4"):
        model(torch.zeros(1, 6, 30, 32), torch.ones(1))


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_released_layout(parity_dir: Path, name: str) -> None:
    with torch.device("meta"):
        net = SR3UNet(RELEASED[name])
    mine = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    # Same keys, shapes and even order as the checkpoint.
    assert mine == list(released_shapes(parity_dir, name).items())


@pytest.mark.parametrize("name", sorted(RELEASED))
def test_infer_released_config(parity_dir: Path, name: str) -> None:
    cfg = RELEASED[name]
    sd = {k: torch.empty(s, device="meta") for k, s in released_shapes(parity_dir, name).items()}
    assert infer_sr3_config(sd, norm_groups=cfg.norm_groups, image_size=cfg.image_size) == cfg
    # Without image_size attention is placed relative to 128, which keeps its level index.
    guessed = infer_sr3_config(sd)
    assert guessed.image_size == 128 and guessed.norm_groups == 32
    assert guessed.attn_res == tuple(r * 128 // cfg.image_size for r in cfg.attn_res)


def test_infer_fixture_config(config: SR3Config, state_dict: dict[str, torch.Tensor]) -> None:
    assert infer_sr3_config(state_dict, norm_groups=16, image_size=32) == config
    assert infer_sr3_config(state_dict).attn_res == (32,)  # level 2 of a 128 image
    with pytest.raises(KeyError, match="denoise_fn"):
        infer_sr3_config({f"denoise_fn.{k}": v for k, v in state_dict.items()})


@torch.no_grad()
def test_condition_augmentation(
    config: SR3Config,
    model: SR3UNet,
    state_dict: dict[str, torch.Tensor],
    io: dict[str, torch.Tensor],
) -> None:
    aug_cfg = SR3Config(**{**config.__dict__, "condition_augmentation": True})
    aug = SR3UNet(aug_cfg).eval()
    missing, unexpected = aug.load_state_dict(state_dict, strict=False)
    extra = {f"aug_level_mlp.{i}.{p}" for i in (1, 3) for p in ("weight", "bias")}
    assert set(missing) == extra and not unexpected
    assert extra <= set(aug.state_dict()) and not extra & set(model.state_dict())
    assert infer_sr3_config(aug.state_dict(), 16, 32) == aug_cfg

    x, level = io["unet.x"], io["unet.noise_level"]
    expected = model(x, level)
    # The zero-initialised output layer makes a fresh embedding exactly neutral.
    batch = len(x)  # the fixture's batch size
    for aug_level in (None, torch.zeros(batch), torch.rand(batch, 1)):
        torch.testing.assert_close(aug(x, level, aug_level), expected, atol=0, rtol=0)

    torch.testing.assert_close(model(x, level, torch.zeros(batch, 1)), expected, atol=0, rtol=0)
    with pytest.raises(ValueError, match="condition_augmentation"):
        model(x, level, torch.full((batch,), 0.3))
