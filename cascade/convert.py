"""Converters from the released containers to the native format.

- SR3 (Janspiry `I*_gen.pth`): `GaussianDiffusion.state_dict()`, UNet keys under `denoise_fn.`
  plus 12 schedule buffers.
- ADM (guided-diffusion `*.pt`): a plain UNet state dict, float32 views of shared storages.

Both are read with `torch.load(weights_only=True)`: they hold tensors only, and nothing else
may execute while loading a file from the internet.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor

from cascade.adm import ADMConfig
from cascade.checkpoints import CheckpointError, check_state_dict, save_model, spec_network_meta
from cascade.presets import PRESETS, ModelSpec, ScheduleConfig, get_preset
from cascade.schedule import SR3_BUFFER_NAMES, sr3_betas
from cascade.sr3 import SR3Config, infer_sr3_config

log = logging.getLogger(__name__)


def read_torch_state_dict(path: str | Path) -> dict[str, Tensor]:
    """A released `.pth`/`.pt` file as a dict of detached tensors (weights_only)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no such file: {path}")
    try:
        data = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as error:  # zip, pickle and unpickler errors all mean "not usable"
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({error})") from error
    if not isinstance(data, Mapping) or not all(isinstance(v, Tensor) for v in data.values()):
        raise CheckpointError(f"{path} does not hold a flat state dict of tensors")
    state = {str(k): v.detach() for k, v in data.items()}
    if any(k.startswith("module.") for k in state):
        log.warning("%s has a 'module.' prefix: written by some other tool; stripping it", path)
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return state


def _shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in state.items()}


def fitting_presets(family: str, state: Mapping[str, Tensor]) -> list[str]:
    """Presets of `family` whose network has exactly these key names and shapes."""
    wanted = _shapes(state)
    return [
        name
        for name, spec in PRESETS.items()
        if spec.family == family and _shapes(spec_network_meta(spec).state_dict()) == wanted
    ]


def _choose_spec(
    family: str, state: Mapping[str, Tensor], preset: str | None, config: ModelSpec | None
) -> ModelSpec:
    if config is not None:
        return config
    if preset is not None:
        return get_preset(preset)
    fits = fitting_presets(family, state)
    if len(fits) == 1:
        log.info("weights fit preset %s", fits[0])
        return get_preset(fits[0])
    if fits:
        raise CheckpointError(
            f"several presets fit these weights: {', '.join(fits)}; choose one with --preset"
        )
    candidates = sorted(name for name, spec in PRESETS.items() if spec.family == family)
    raise CheckpointError(
        f"no {family} preset fits these weights (presets: {', '.join(candidates)}); "
        "pass --config with the training configuration (JSON)"
    )


def sr3_unet_state(state: Mapping[str, Tensor]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """Split a Janspiry generator state dict into (UNet weights, schedule buffers)."""
    if any(k.startswith("denoise_fn.") for k in state):
        unet = {
            k.removeprefix("denoise_fn."): v
            for k, v in state.items()
            if k.startswith("denoise_fn.")
        }
    else:
        unet = {k: v for k, v in state.items() if k not in SR3_BUFFER_NAMES}
    buffers = {k: v for k, v in state.items() if k in SR3_BUFFER_NAMES}
    other = set(state) - set(buffers) - {f"denoise_fn.{k}" for k in unet} - set(unet)
    if other:
        raise CheckpointError(f"unexpected key {sorted(other)[0]!r} in an SR3 generator file")
    if "downs.0.weight" not in unet:
        raise CheckpointError("missing key 'denoise_fn.downs.0.weight': not an SR3 generator file")
    return unet, buffers


def _sr3_schedule(buffers: Mapping[str, Tensor], default: ScheduleConfig) -> ScheduleConfig:
    """The training schedule, read back from the stored betas when they are linear."""
    betas = buffers.get("betas")
    if betas is None:
        return default
    steps = len(betas)
    start, end = float(betas[0]), float(betas[-1])
    rebuilt = sr3_betas("linear", steps, start, end).to(torch.float32)
    if not torch.allclose(rebuilt, betas.float(), rtol=1e-5, atol=1e-9):
        log.warning("stored betas are not linear; using the preset schedule %s", default)
        return default
    # The buffers were float32: round the ends to the values the configs use (1e-6, 1e-2).
    return ScheduleConfig("sr3", "linear", steps, float(f"{start:.6g}"), float(f"{end:.6g}"))


def sr3_spec_from_config(data: Mapping[str, Any]) -> ModelSpec:
    """A spec from a JSON config: reference UNet kwargs, optionally under `unet_kwargs`."""
    kwargs = dict(data.get("unet_kwargs", data))
    scale = int(kwargs.pop("scale", data.get("scale", 4)))
    network = SR3Config.from_reference_kwargs(kwargs)
    return ModelSpec(
        "sr3",
        network,
        ScheduleConfig("sr3", "linear", 2000),
        "upscale",
        network.image_size,
        scale=scale,
        description="SR3 (converted, own config)",
    )


def adm_spec_from_config(data: Mapping[str, Any]) -> ModelSpec:
    """A spec from guided-diffusion flags (as in its README), plus `noise_schedule`."""
    flags = dict(data)
    schedule = ScheduleConfig(
        "adm", flags.pop("noise_schedule", "linear"), int(flags.pop("diffusion_steps", 1000))
    )
    for ignored in (
        "timestep_respacing",
        "use_kl",
        "predict_xstart",
        "rescale_timesteps",
        "rescale_learned_sigmas",
        "use_fp16",
        "use_checkpoint",
    ):
        flags.pop(ignored, None)
    network = ADMConfig.from_flags(**flags)
    if network.super_resolution:
        small = int(flags["small_size"])
        return ModelSpec(
            "adm",
            network,
            schedule,
            "upscale",
            network.image_size,
            scale=network.image_size // small,
            description="ADM upsampler (converted)",
        )
    return ModelSpec(
        "adm", network, schedule, "generate", network.image_size, description="ADM base (converted)"
    )


def convert(
    family: Literal["sr3", "adm"],
    source: str | Path,
    destination: str | Path,
    preset: str | None = None,
    config: str | Path | Mapping[str, Any] | None = None,
    dtype: torch.dtype | None = None,
) -> ModelSpec:
    """Convert a released SR3 or ADM file into a native checkpoint; returns its spec."""
    state = read_torch_state_dict(source)
    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).read_text())
    if family == "sr3":
        unet, buffers = sr3_unet_state(state)
        own = sr3_spec_from_config(config) if config is not None else None
        if own is None and preset is None and not fitting_presets("sr3", unet):
            inferred = infer_sr3_config(unet)
            raise CheckpointError(
                "no SR3 preset fits these weights (inferred: inner_channels="
                f"{inferred.inner_channels}, channel_mults={inferred.channel_mults}, "
                f"res_blocks={inferred.res_blocks}; norm_groups is not stored in the file); "
                "pass --config with the UNet kwargs (JSON) or --preset"
            )
        spec = _choose_spec("sr3", unet, preset, own)
        spec = dataclasses.replace(spec, schedule=_sr3_schedule(buffers, spec.schedule))
        weights = unet
    elif family == "adm":
        own = adm_spec_from_config(config) if config is not None else None
        spec = _choose_spec("adm", state, preset, own)
        weights = state
    else:
        raise ValueError(f"unknown family {family!r}; choose sr3 or adm")
    if spec.family != family:
        raise CheckpointError(f"preset is a {spec.family} model, not {family}")
    check_state_dict(spec_network_meta(spec), weights)
    source_name = Path(source).name
    save_model(destination, spec, weights, dtype=dtype, metadata={"cascade.source": source_name})
    return spec
