"""Native checkpoints and the converters for the released SR3 and ADM containers."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from cascade.checkpoints import CheckpointError, load, load_model, read_spec, save_model
from cascade.convert import convert, fitting_presets, read_torch_state_dict
from cascade.presets import PRESETS, ModelSpec


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_spec_json_round_trip(name):
    spec = PRESETS[name]
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_save_and_load_rebuilds_without_flags(tmp_path):
    model = load("preset:sr256-tiny")
    path = save_model(tmp_path / "m.safetensors", model.spec, model.network.state_dict())
    again = load_model(path)
    assert again.spec == model.spec and not again.random_weights
    for key, value in model.network.state_dict().items():
        assert torch.equal(value, again.network.state_dict()[key])


def test_checkpoints_saved_before_parameterisation_load_as_eps_on_the_image(tmp_path):
    """Specs written before `prediction`/`diffused`/`classes` existed mean what they meant
    then: eps of the image, every class; the denoiser returns the raw network output."""
    model = load("preset:sr3-16-128")
    old = json.loads(model.spec.to_json())
    for key in ("prediction", "diffused", "residual_scale", "classes"):
        old.pop(key)
    path = tmp_path / "old.safetensors"
    tensors = {k: v.contiguous() for k, v in model.network.state_dict().items()}
    save_file(tensors, path, metadata={"cascade.spec": json.dumps(old), "cascade.format": "1"})
    again = load_model(path)
    assert (again.spec.prediction, again.spec.diffused, again.spec.classes) == ("eps", "image", ())
    x, low = torch.randn(1, 3, 32, 32), torch.rand(1, 3, 4, 4) * 2 - 1  # any size: 1/16 the work
    t = torch.tensor([7])
    schedule = again.spec.schedule.build()
    cond = {"low_res": low}
    with torch.no_grad():
        pred = again.denoiser(x, t, schedule, cond)
        raw = again.raw_denoiser()(x, t, schedule, cond)
    assert pred.x0 is None and torch.equal(pred.eps, raw.eps)


def test_native_presets_are_residual_v_upscalers_and_a_v_base():
    for name in ("sr256", "sr1024", "sr256-small", "sr1024-small", "sr256-tiny"):
        spec = PRESETS[name]
        assert (spec.prediction, spec.diffused, spec.residual_scale) == ("v", "residual", 4.0)
    assert PRESETS["base64-small"].prediction == "v"
    assert PRESETS["sr3-16-128"].prediction == "eps" and PRESETS["adm-64"].prediction == "eps"
    with pytest.raises(ValueError, match="residual"):
        ModelSpec.from_dict({**json.loads(PRESETS["base64"].to_json()), "diffused": "residual"})


def test_fp16_checkpoint_loads_as_float32(tmp_path):
    model = load("preset:base64-tiny")
    path = save_model(
        tmp_path / "m.safetensors", model.spec, model.network.state_dict(), dtype=torch.float16
    )
    assert next(iter(load_file(path).values())).dtype == torch.float16
    again = load_model(path)
    assert next(again.network.parameters()).dtype == torch.float32


def test_load_errors(tmp_path):
    with pytest.raises(CheckpointError, match="no checkpoint"):
        load_model(tmp_path / "missing.safetensors")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file at all")
    with pytest.raises(CheckpointError, match="not a safetensors"):
        read_spec(bad)
    plain = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(plain))
    with pytest.raises(CheckpointError, match="no model spec"):
        read_spec(plain)


def _tiny_checkpoint(path, poison=None):
    """sr256-tiny's random weights saved to `path`, one tensor filled with `poison` if given."""
    model = load("preset:sr256-tiny")
    state = {key: value.clone() for key, value in model.network.state_dict().items()}
    if poison is not None:
        key = sorted(key for key, value in state.items() if value.is_floating_point())[3]
        state[key].view(-1)[:2] = poison
    return save_model(path, model.spec, state), model


@pytest.mark.parametrize("poison", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_naming_the_file_and_the_stage(tmp_path, poison):
    path, _ = _tiny_checkpoint(tmp_path / "broken.safetensors", poison)
    with pytest.raises(CheckpointError) as raised:
        load(path, stage="sr256")
    message = str(raised.value)
    assert message.startswith("stage sr256: broken.safetensors: 1 of ")
    assert "NaN or infinite" in message and "2 of " in message
    assert str(tmp_path) not in message  # the file's name, never the host's folders


def test_missing_unreadable_and_corrupt_files_are_refused_with_a_reason(tmp_path):
    with pytest.raises(
        CheckpointError, match=r"^stage base64: no checkpoint file gone\.safetensors"
    ):
        load(tmp_path / "gone.safetensors", stage="base64")
    (tmp_path / "folder.safetensors").mkdir()
    with pytest.raises(CheckpointError, match="folder.safetensors .missing, or not a file"):
        load(tmp_path / "folder.safetensors", stage="sr256")
    path, _ = _tiny_checkpoint(tmp_path / "cut.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # a copy cut short
    with pytest.raises(CheckpointError) as raised:
        load(path, stage="sr256")
    assert str(raised.value).startswith("stage sr256: cut.safetensors")
    assert str(tmp_path) not in str(raised.value)


def test_a_loaded_checkpoint_is_named_by_file_name_and_sha256(tmp_path):
    path, _ = _tiny_checkpoint(tmp_path / "good.safetensors")
    model = load(path)
    expected = hashlib.sha256(path.read_bytes()).hexdigest()
    assert model.weights == {"file": "good.safetensors", "sha256": expected}
    assert model.id == "good.safetensors"
    random = load("preset:sr256-tiny")
    assert random.weights == {"file": None, "sha256": None}
    assert random.id == "preset sr256-tiny (random weights)"


def test_mismatch_names_first_key(tmp_path):
    model = load("preset:sr256-tiny")
    state = dict(model.network.state_dict())
    missing = next(iter(state))
    del state[missing]
    with pytest.raises(CheckpointError, match=f"missing key '{missing}'"):
        save_model(tmp_path / "x.safetensors", model.spec, state)
    state = dict(model.network.state_dict())
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError, match="unexpected key 'extra.weight'"):
        save_model(tmp_path / "x.safetensors", model.spec, state)


def _sr3_config_file(tmp_path, sr3_config):
    path = tmp_path / "sr3.json"
    path.write_text(json.dumps({"unet_kwargs": sr3_config["unet_kwargs"]}))
    return path


def test_convert_sr3_container(tmp_path, parity_dir, sr3_config):
    src = parity_dir / "sr3" / "I10_E1_gen.pth"
    # No released preset fits the fixture's shapes; the error says what to do.
    with pytest.raises(CheckpointError, match="no SR3 preset fits"):
        convert("sr3", src, tmp_path / "x.safetensors")
    dst = tmp_path / "sr3.safetensors"
    spec = convert("sr3", src, dst, config=_sr3_config_file(tmp_path, sr3_config))
    assert spec.schedule.num_timesteps == 2000 and spec.schedule.linear_start == 1e-6
    model = load_model(dst)
    reference = load_file(parity_dir / "sr3" / "unet_state_dict.safetensors")
    for key, value in reference.items():
        assert torch.equal(model.network.state_dict()[key], value)
    io = load_file(parity_dir / "sr3" / "io.safetensors")
    out = model.network(io["unet.x"], io["unet.noise_level"])
    torch.testing.assert_close(out, io["unet.out"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", ["base", "sr"])
def test_convert_adm_container(tmp_path, parity_dir, adm_config, kind):
    src = parity_dir / "adm" / f"{kind}_tiny.pt"
    flags = adm_config[kind]["create_model_kwargs" if kind == "base" else "flag_equivalent"]
    flags = {**flags, "noise_schedule": adm_config["diffusion"][kind]["noise_schedule"]}
    config = tmp_path / "flags.json"
    config.write_text(json.dumps(flags))
    with pytest.raises(CheckpointError, match="no adm preset fits"):
        convert("adm", src, tmp_path / "x.safetensors")
    dst = tmp_path / "adm.safetensors"
    spec = convert("adm", src, dst, config=config)
    assert spec.task == ("generate" if kind == "base" else "upscale")
    model = load_model(dst)
    io = load_file(parity_dir / "adm" / "io.safetensors")
    if kind == "base":
        out = model.network(io["base_x"], io["base_t"], y=io["base_y"])
        torch.testing.assert_close(out, io["base_out"], atol=1e-4, rtol=1e-4)
    else:
        out = model.network(io["sr_x"], io["sr_t"], y=io["sr_y"], low_res=io["sr_low_res"])
        torch.testing.assert_close(out, io["sr_out"], atol=1e-4, rtol=1e-4)


def test_released_presets_are_found_from_shapes(sr3_config):
    # Build state dicts with the released shapes on the meta device, check the preset match.
    for name in ("sr3-16-128", "sr3-64-512", "adm-64", "adm-64-256"):
        with torch.device("meta"):
            state = PRESETS[name].build().state_dict()
        assert fitting_presets(PRESETS[name].family, state) == [name]


def test_corrupted_containers(tmp_path, parity_dir, sr3_config, adm_config):
    src = parity_dir / "sr3" / "I10_E1_gen.pth"
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(src.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="not a readable PyTorch checkpoint"):
        convert("sr3", truncated, tmp_path / "x.safetensors")
    copy = tmp_path / "copy.pth"
    shutil.copy(src, copy)
    state = read_torch_state_dict(copy)
    del state["denoise_fn.final_conv.block.3.weight"]
    torch.save(state, copy)
    with pytest.raises(CheckpointError, match="missing key 'final_conv.block.3.weight'"):
        convert(
            "sr3", copy, tmp_path / "x.safetensors", config=_sr3_config_file(tmp_path, sr3_config)
        )
    state = read_torch_state_dict(parity_dir / "adm" / "base_tiny.pt")
    state["input_blocks.0.0.weight"] = torch.zeros(1, 2, 3, 3)
    torch.save(state, copy)
    with pytest.raises(CheckpointError, match="shape mismatch for 'input_blocks.0.0.weight'"):
        convert(
            "adm",
            copy,
            tmp_path / "x.safetensors",
            config=adm_config["base"]["create_model_kwargs"],
        )
    # A released preset named for weights of another size fails at the first differing key.
    with pytest.raises(CheckpointError, match="shape mismatch for 'time_embed.0.weight'"):
        convert(
            "adm", parity_dir / "adm" / "base_tiny.pt", tmp_path / "x.safetensors", preset="adm-64"
        )
