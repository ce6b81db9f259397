"""The native checkpoint format: safetensors weights with the model spec in the metadata."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from cascade.denoiser import ClassifierFreeGuidance, Denoiser, Parameterization
from cascade.families import FAMILIES
from cascade.presets import ModelSpec, get_preset

log = logging.getLogger(__name__)

SPEC_KEY = "cascade.spec"
FORMAT_KEY = "cascade.format"
FORMAT_VERSION = "1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason."""


@dataclass
class Model:
    """A network ready to sample: its spec, weights and the denoiser wrapper for its family."""

    spec: ModelSpec
    network: nn.Module
    source: str  # a file path, or "preset NAME (random weights)"
    random_weights: bool = False
    sha256: str | None = None  # of the checkpoint file, hashed once when it was loaded

    @property
    def denoiser(self) -> Parameterization:
        """The network behind the denoiser contract."""
        return self.parameterize(self.raw_denoiser())

    def raw_denoiser(self, guidance: float = 1.0) -> Denoiser:
        """The family wrapper (raw network output), with classifier-free guidance when
        `guidance` != 1 (the model must have a null class). Tiling wraps this level, so the
        residual's upsampled condition is taken from the whole image, not per tile."""
        spec = self.spec
        raw = FAMILIES[spec.family].denoiser(self.network)
        if guidance != 1.0:
            if spec.null_class is None:
                raise ValueError(f"guidance {guidance} needs a model trained with a null class")
            raw = ClassifierFreeGuidance(raw, guidance, spec.null_class)
        return raw

    def parameterize(self, raw: Denoiser) -> Parameterization:
        """Raw output -> the sampler contract, as this model's spec says."""
        spec = self.spec
        return Parameterization(raw, spec.prediction, spec.diffused, spec.residual_scale)

    @property
    def id(self) -> str:
        """How jobs, errors and logs name the weights: the checkpoint's file name (never the
        host's folders, which a job view would otherwise show to every client), or the preset."""
        return Path(self.source).name if self.sha256 is not None else self.source

    @property
    def weights(self) -> dict[str, str | None]:
        """The weights by file name and SHA-256 (both None for random weights)."""
        file = self.id if self.sha256 is not None else None
        return {"file": file, "sha256": self.sha256}


def check_state_dict(network: nn.Module, state_dict: Mapping[str, Tensor]) -> None:
    """Raise CheckpointError naming the first missing or unexpected key, or shape mismatch."""
    expected = network.state_dict()
    for key, value in expected.items():
        if key not in state_dict:
            raise CheckpointError(f"missing key {key!r} (shape {tuple(value.shape)})")
        if tuple(state_dict[key].shape) != tuple(value.shape):
            raise CheckpointError(
                f"shape mismatch for {key!r}: checkpoint {tuple(state_dict[key].shape)}, "
                f"model {tuple(value.shape)}"
            )
    for key in state_dict:
        if key not in expected:
            raise CheckpointError(f"unexpected key {key!r}")


def save_model(
    path: str | Path,
    spec: ModelSpec,
    state_dict: Mapping[str, Tensor],
    dtype: torch.dtype | None = None,
    metadata: Mapping[str, str] | None = None,
) -> Path:
    """Write weights (optionally cast, e.g. to float16) and the spec to one safetensors file."""
    path = Path(path)
    check_state_dict(spec_network_meta(spec), state_dict)
    tensors = {}
    for key, value in state_dict.items():
        value = value.detach()
        if dtype is not None and value.is_floating_point():
            value = value.to(dtype)
        # Views into shared storages (guided-diffusion's fp16 saves) must not drag the storage.
        tensors[key] = value.contiguous().clone().cpu()
    meta = {SPEC_KEY: spec.to_json(), FORMAT_KEY: FORMAT_VERSION, **(metadata or {})}
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(path), metadata=meta)
    return path


def read_spec(path: str | Path) -> tuple[ModelSpec, dict[str, str]]:
    """The spec and metadata of a native checkpoint, without reading the weights."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint file {path.name} (missing, or not a file)")
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
    except OSError as error:  # unreadable (permissions, I/O), not corrupt
        raise CheckpointError(f"{path.name} cannot be read ({error.strerror or error})") from error
    except Exception as error:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path.name} is not a safetensors file ({error})") from error
    if SPEC_KEY not in metadata:
        raise CheckpointError(
            f"{path.name} has no model spec in its metadata: not a cascade checkpoint "
            "(convert released weights with `cascade convert`)"
        )
    try:
        spec = ModelSpec.from_json(metadata[SPEC_KEY])
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{path.name} has an unreadable model spec ({error})") from error
    return spec, metadata


def check_finite(state_dict: Mapping[str, Tensor]) -> None:
    """Raise CheckpointError when a floating-point tensor holds NaN or infinity: such weights
    load and run, and every image they make comes out NaN (black once saved)."""
    broken = {}
    for key, value in state_dict.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            broken[key] = int((~torch.isfinite(value)).sum())
    if broken:
        first, count = next(iter(broken.items()))
        raise CheckpointError(
            f"{len(broken)} of {len(state_dict)} tensors hold NaN or infinite values (first "
            f"{first!r}: {count} of {state_dict[first].numel()}): the weights are broken; "
            "retrain or re-convert them"
        )


def file_sha256(path: Path) -> str:
    """The file's SHA-256, read in chunks (checkpoints can be gigabytes)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def load_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    stage: str | None = None,
) -> Model:
    """Rebuild the network a native checkpoint describes and load its weights, no flags.

    Refuses (CheckpointError naming the file, and `stage` when given) a missing, unreadable or
    corrupt file, weights that do not fit their spec, and weights holding NaN or infinity."""
    path = Path(path)
    try:
        return _load_model(path, device, dtype)
    except CheckpointError as error:
        if stage is None:
            raise
        raise CheckpointError(f"stage {stage}: {error}") from error


def _load_model(path: Path, device: torch.device | str, dtype: torch.dtype) -> Model:
    spec, _ = read_spec(path)
    tensors: dict[str, Tensor] = {}
    try:
        sha256 = file_sha256(path)
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                tensors[key] = handle.get_tensor(key)
    except Exception as error:
        raise CheckpointError(f"{path.name}: cannot read weights ({error})") from error
    try:
        network = spec.build()
        check_state_dict(network, tensors)
        check_finite(tensors)
    except CheckpointError as error:
        raise CheckpointError(f"{path.name}: {error}") from error
    except (TypeError, ValueError) as error:  # a spec that parses but builds no network
        raise CheckpointError(f"{path.name}: its model spec builds no network ({error})") from error
    network.load_state_dict({k: v.to(torch.float32) for k, v in tensors.items()})
    network.to(device=device, dtype=dtype).eval().requires_grad_(False)
    log.info("loaded %s from %s (sha256 %s)", spec.description or spec.family, path, sha256)
    return Model(spec, network, str(path), sha256=sha256)


def model_from_preset(
    name: str, device: torch.device | str = "cpu", seed: int = 0, dtype: torch.dtype = torch.float32
) -> Model:
    """A preset with random weights (seeded), for tests and demos; clearly marked as such."""
    spec = get_preset(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        network = spec.build()
    network.to(device=device, dtype=dtype).eval().requires_grad_(False)
    log.warning("preset %s has RANDOM weights: outputs are not meaningful images", name)
    return Model(spec, network, f"preset {name} (random weights)", random_weights=True)


def load(
    source: str | Path,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    stage: str | None = None,
) -> Model:
    """A checkpoint path, or `preset:NAME` for random weights (`stage` names refusals)."""
    text = str(source)
    if text.startswith("preset:"):
        return model_from_preset(text.removeprefix("preset:"), device, dtype=dtype)
    return load_model(text, device, dtype, stage)


def spec_summary(spec: ModelSpec) -> str:
    """One line describing a spec (for CLIs and logs)."""
    params = sum(p.numel() for p in spec_network_meta(spec).parameters())
    return json.dumps(
        {
            "family": spec.family,
            "task": spec.task,
            "size": spec.image_size,
            "scale": spec.scale,
            "prediction": spec.prediction,
            "diffused": spec.diffused,
            "params": params,
            "description": spec.description,
        }
    )


def spec_network_meta(spec: ModelSpec) -> nn.Module:
    """The network on the meta device: shapes without memory."""
    with torch.device("meta"):
        return spec.build()
