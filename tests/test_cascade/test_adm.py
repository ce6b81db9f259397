"""Parity of cascade.adm with the guided-diffusion fixtures, plus config and input checks."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from cascade.adm import ADMConfig, ADMUNet, timestep_embedding

TOL = {"atol": 1e-4, "rtol": 1e-4}

# MODEL_FLAGS of the released checkpoints, exactly as the guided-diffusion README gives them.
BASE64_FLAGS = (
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --dropout 0.1 "
    "--image_size 64 --learn_sigma True --noise_schedule cosine --num_channels 192 "
    "--num_head_channels 64 --num_res_blocks 3 --resblock_updown True "
    "--use_new_attention_order True --use_fp16 True --use_scale_shift_norm True"
)
UP64_256_FLAGS = (
    "--attention_resolutions 32,16,8 --class_cond True --diffusion_steps 1000 --large_size 256 "
    "--small_size 64 --learn_sigma True --noise_schedule linear --num_channels 192 --num_heads 4 "
    "--num_res_blocks 2 --resblock_updown True --use_fp16 True --use_scale_shift_norm True"
)


def _parse_flags(text: str) -> dict[str, str]:
    tokens = text.split()
    return {k.removeprefix("--"): v for k, v in zip(tokens[::2], tokens[1::2], strict=True)}


def _config_from_unet_kwargs(kw: dict, super_resolution: bool) -> ADMConfig:
    """The ADMConfig equivalent of the reference UNetModel/SuperResModel constructor kwargs."""
    return ADMConfig(
        image_size=kw["image_size"],
        in_channels=kw["in_channels"],
        model_channels=kw["model_channels"],
        out_channels=kw["out_channels"],
        num_res_blocks=kw["num_res_blocks"],
        attention_resolutions=tuple(
            kw.get("attention_resolutions_ds", kw.get("attention_resolutions"))
        ),
        dropout=kw["dropout"],
        channel_mult=tuple(kw["channel_mult"]),
        num_classes=kw["num_classes"],
        num_heads=kw["num_heads"],
        num_head_channels=kw["num_head_channels"],
        num_heads_upsample=kw["num_heads_upsample"],
        use_scale_shift_norm=kw["use_scale_shift_norm"],
        resblock_updown=kw["resblock_updown"],
        attention_order="new" if kw["use_new_attention_order"] else "legacy",
        super_resolution=super_resolution,
    )


@pytest.fixture(scope="module")
def io(parity_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(parity_dir / "adm" / "io.safetensors")


def _load(parity_dir: Path, name: str, config: ADMConfig) -> ADMUNet:
    model = ADMUNet(config).eval()
    sd = {k: v.float() for k, v in load_file(parity_dir / "adm" / f"{name}.safetensors").items()}
    model.load_state_dict(sd, strict=True)
    return model


@pytest.fixture(scope="module")
def base(parity_dir: Path, adm_config: dict) -> ADMUNet:
    cfg = _config_from_unet_kwargs(adm_config["base"]["resolved_unet_kwargs"], False)
    return _load(parity_dir, "base_state_dict", cfg)


@pytest.fixture(scope="module")
def sr(parity_dir: Path, adm_config: dict) -> ADMUNet:
    cfg = _config_from_unet_kwargs(adm_config["sr"]["superres_kwargs"], True)
    return _load(parity_dir, "sr_state_dict", cfg)


def _close(out: torch.Tensor, ref: torch.Tensor) -> None:
    assert out.shape == ref.shape
    diff = (out - ref).abs().max().item()
    assert torch.allclose(out, ref, **TOL), f"max abs diff {diff:.3e}"


def test_timestep_embedding(io: dict) -> None:
    _close(timestep_embedding(io["temb_t"], 32), io["temb_dim32"])
    assert timestep_embedding(io["temb_t"], 33).shape == (5, 33)


@torch.no_grad()
def test_base_forward(base: ADMUNet, io: dict) -> None:
    _close(base(io["base_x"], io["base_t"], io["base_y"]), io["base_out"])


@torch.no_grad()
def test_base_forward_float_timesteps(base: ADMUNet, io: dict) -> None:
    _close(base(io["base_x"], io["base_t_float"], io["base_y"]), io["base_out_float_t"])


@torch.no_grad()
def test_base_channels_last(base: ADMUNet, io: dict) -> None:
    x = io["base_x"].contiguous(memory_format=torch.channels_last)
    _close(base(x, io["base_t"], io["base_y"]), io["base_out"])


@torch.no_grad()
def test_base_autocast(base: ADMUNet, io: dict) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = base(io["base_x"], io["base_t"], io["base_y"])
    assert out.shape == io["base_out"].shape and torch.isfinite(out).all()
    assert (out.float() - io["base_out"]).abs().max() < 0.25


@torch.no_grad()
def test_sr_upsamples_low_res_as_the_reference_does(sr: ADMUNet, io: dict) -> None:
    # Given the reference's own upsampled input (already at full size, which the model's
    # upsampling leaves as it is), the model must answer as it does from the small one: that
    # holds only if its upsampling is the reference's.
    args = (io["sr_x"], io["sr_t"])
    assert io["sr_low_res_upsampled"].shape[-2:] == io["sr_x"].shape[-2:]
    from_reference = sr(*args, y=io["sr_y"], low_res=io["sr_low_res_upsampled"])
    _close(from_reference, io["sr_out"])
    _close(sr(*args, y=io["sr_y"], low_res=io["sr_low_res"]), from_reference)


@torch.no_grad()
def test_sr_forward(sr: ADMUNet, io: dict) -> None:
    out = sr(io["sr_x"], io["sr_t"], y=io["sr_y"], low_res=io["sr_low_res"])
    _close(out, io["sr_out"])


def test_state_dict_keys_match_fixture(base: ADMUNet, sr: ADMUNet, parity_dir: Path) -> None:
    for model, name in ((base, "base_state_dict"), (sr, "sr_state_dict")):
        ref = load_file(parity_dir / "adm" / f"{name}.safetensors")
        sd = model.state_dict()
        assert sorted(sd) == sorted(ref)
        assert all(sd[k].shape == ref[k].shape for k in ref)
        assert not list(model.buffers())


def test_from_flags_matches_resolved(adm_config: dict) -> None:
    base = ADMConfig.from_flags(**adm_config["base"]["create_model_kwargs"])
    assert base == _config_from_unet_kwargs(adm_config["base"]["resolved_unet_kwargs"], False)
    sr = ADMConfig.from_flags(**adm_config["sr"]["flag_equivalent"])
    assert sr == _config_from_unet_kwargs(adm_config["sr"]["superres_kwargs"], True)
    assert base.learn_sigma and sr.learn_sigma and sr.super_resolution


def test_from_flags_default_channel_mult() -> None:
    assert ADMConfig.from_flags(image_size=128).channel_mult == (1, 1, 2, 3, 4)
    assert ADMConfig.from_flags(image_size=512).channel_mult == (0.5, 1, 1, 2, 2, 4, 4)
    assert ADMConfig.from_flags(large_size=512, small_size=128).channel_mult == (1, 1, 2, 2, 4, 4)
    with pytest.raises(ValueError, match="unknown ADM flags"):
        ADMConfig.from_flags(image_size=64, num_channel=192)


@pytest.mark.parametrize(
    ("flags", "attention", "params", "keys"),
    [
        (BASE64_FLAGS, (2, 4, 8), 295_904_454, 541),
        (UP64_256_FLAGS, (8, 16, 32), 311_795_910, 567),
    ],
)
def test_released_configs_on_meta(
    flags: str, attention: tuple[int, ...], params: int, keys: int
) -> None:
    cfg = ADMConfig.from_flags(**_parse_flags(flags))
    assert cfg.attention_resolutions == attention
    with torch.device("meta"):
        model = ADMUNet(cfg)
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == keys


def test_released_base_layout_on_meta() -> None:
    with torch.device("meta"):
        model = ADMUNet(ADMConfig.from_flags(**_parse_flags(BASE64_FLAGS)))
    sd = model.state_dict()
    assert sd["input_blocks.5.0.skip_connection.weight"].shape == (384, 192, 1, 1)
    assert sd["middle_block.1.qkv.weight"].shape == (2304, 768, 1)
    assert sd["output_blocks.0.0.in_layers.2.weight"].shape == (768, 1536, 3, 3)
    assert sd["out.2.weight"].shape == (6, 192, 3, 3)
    assert model.middle_block[1].num_heads == 12


def test_input_errors(base: ADMUNet, sr: ADMUNet, io: dict) -> None:
    x, t, y = io["base_x"], io["base_t"], io["base_y"]
    with pytest.raises(ValueError, match="class-conditional"):
        base(x, t)
    with pytest.raises(ValueError, match="0..999"):
        base(x, t, torch.full_like(y, 1000))  # the null label: out of the 0..999 range
    with pytest.raises(ValueError, match="not a super-resolution"):
        base(x, t, y, low_res=x)
    with pytest.raises(ValueError, match="needs low_res"):
        sr(io["sr_x"], io["sr_t"], y=io["sr_y"])
    uncond = ADMUNet(
        ADMConfig(
            image_size=16,
            model_channels=32,
            num_res_blocks=1,
            channel_mult=(1, 2),
            attention_resolutions=(2,),
            num_classes=None,
        )
    )
    with pytest.raises(ValueError, match="unconditional"):
        uncond(x, t, y)
