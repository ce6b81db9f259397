"""The JPEG pre-clean: a small convolutional network that takes a JPEG input's blocking, ringing
and chroma smearing out before an upscaler sees it, told the file's quality.

An upscaler trained on clean inputs reads JPEG artifacts as detail and sharpens them; one trained
blind on a mixture cannot tell a clean input from a mildly compressed one at its crop size and
smooths both (weights/demo/sr256.md measures both). A JPEG file states what was done to it: its
quantisation tables give the quality (`cascade.formats.jpeg_quality`). So, as FBCNN (Jiang et
al. 2021) conditions artifact removal on the quality factor and RealBasicVSR (Chan et al. 2022)
cleans its inputs before super-resolving them, a JPEG upload is cleaned at its own resolution by
this network, conditioned on its quality as a constant input plane (FFDNet's noise-level map,
Zhang et al. 2018), and the upscaler then runs on the result as on a clean input. PNG and WebP
inputs are never touched.

The network works on the 2x2 pixel-unshuffled image (each JPEG block is 4x4 there; the
receptive field doubles for the cost), residual blocks, and adds its output to the input, so an
untrained one (zero last layer) is the identity.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from cascade.images import as_float_image
from cascade.samplers import DIHEDRAL, dihedral, undo_dihedral

# The qualities the network is trained on (`cascade train-deblock`); files of a higher quality
# carry too little to clean and run as they are, lower ones are cleaned as the lowest.
QUALITY_RANGE = (30, 95)
KIND = "cascade-deblock"
# `clean` averages the network's output over the input's eight flips and rotations (the
# geometric self-ensemble, as fidelity 1 does): on the held-out photos' 64 px JPEG q75 inputs,
# +0.21 dB over one view (weights/demo/deblock.md). The input is padded to whole 8 px blocks
# first, so every view keeps the file's block grid.
VIEWS = len(DIHEDRAL)
BLOCK = 8


@dataclass(frozen=True)
class DeblockConfig:
    width: int = 64
    blocks: int = 4


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.conv2(F.relu(self.conv1(x)))


class Deblocker(nn.Module):
    """[B, 3, H, W] in [-1, 1] and each image's JPEG quality -> the cleaned images."""

    def __init__(self, config: DeblockConfig = DeblockConfig()):
        super().__init__()
        self.config = config
        width = config.width
        self.head = nn.Conv2d(4 * 3 + 1, width, 3, padding=1)
        self.body = nn.Sequential(*(ResBlock(width) for _ in range(config.blocks)))
        self.tail = nn.Conv2d(width, 4 * 3, 3, padding=1)
        nn.init.zeros_(self.tail.weight)
        nn.init.zeros_(self.tail.bias)

    def forward(self, x: Tensor, quality: Tensor) -> Tensor:
        h, w = x.shape[-2:]
        padded = F.pad(x, (0, w % 2, 0, h % 2), mode="replicate")
        packed = F.pixel_unshuffle(padded, 2)
        level = quality_level(quality).to(packed).view(-1, 1, 1, 1)
        plane = level.expand(packed.shape[0], 1, *packed.shape[-2:])
        features = F.relu(self.head(torch.cat([packed, plane], dim=1)))
        residual = F.pixel_shuffle(self.tail(self.body(features)), 2)
        return (padded + residual)[..., :h, :w]


def quality_level(quality: Tensor) -> Tensor:
    """The conditioning value of a JPEG quality: 0 at the lowest trained, 1 at the highest."""
    low, high = QUALITY_RANGE
    return (quality.float().clamp(low, high) - low) / (high - low)


def applies(quality: int | None) -> bool:
    """Whether an input of this JPEG quality (None: not a JPEG) is cleaned."""
    return quality is not None and quality <= QUALITY_RANGE[1]


# `clean` runs a tall input in bands of rows (the activations of a band, not of the image, are
# alive at a time), each read with MARGIN rows of context either side: more than the network's
# receptive field (2 x 10 convolutions = 20 rows), and a multiple of 8 so every band keeps the
# file's 8 px block grid. The bands' results equal the whole image's.
BAND_ROWS = 256
MARGIN = 32


@torch.no_grad()
def clean(network: Deblocker, low_res: Tensor, quality: int | None, views: int = VIEWS) -> Tensor:
    """`low_res` ([B, 3, H, W]: float in [-1, 1], or uint8 as a decoded upload) cleaned for its
    JPEG `quality`, self-ensembled over `views` of its symmetries, in its own dtype (float
    clamped to [-1, 1]); unchanged when `applies(quality)` is false."""
    if not applies(quality):
        return low_res
    param = next(network.parameters())
    qualities = torch.full((low_res.shape[0],), float(quality), device=param.device)
    out = torch.empty_like(low_res)
    height = low_res.shape[-2]
    for top in range(0, height, BAND_ROWS):
        bottom = min(height, top + BAND_ROWS)
        start, stop = max(0, top - MARGIN), min(height, bottom + MARGIN)
        band = as_float_image(low_res[..., start:stop, :]).to(param)
        cleaned = _ensemble(network, band, qualities, views)
        cleaned = cleaned.clamp(-1.0, 1.0)[..., top - start : bottom - start, :]
        if low_res.dtype == torch.uint8:
            cleaned = cleaned.add(1.0).mul(127.5).round()
        out[..., top:bottom, :] = cleaned.to(out)
    return out


def _ensemble(network: Deblocker, x: Tensor, qualities: Tensor, views: int) -> Tensor:
    """The mean of the network's outputs over the first `views` symmetries of `x`, padded
    (replicated, as JPEG encoders pad) to whole blocks so each view keeps the block grid."""
    h, w = x.shape[-2:]
    padded = F.pad(x, (0, -w % BLOCK, 0, -h % BLOCK), mode="replicate")
    total = torch.zeros_like(padded)
    for turns, flip in DIHEDRAL[:views]:
        total += undo_dihedral(network(dihedral(padded, turns, flip), qualities), turns, flip)
    return (total / views)[..., :h, :w]


def save(network: Deblocker, path: str | Path, **info: object) -> None:
    """The network's float32 weights and what it is (config, quality range, training facts)."""
    metadata = {
        "kind": KIND,
        "config": json.dumps(asdict(network.config)),
        "quality_range": json.dumps(list(QUALITY_RANGE)),
        **{key: json.dumps(value) for key, value in info.items()},
    }
    state = {
        key: value.detach().float().contiguous() for key, value in network.state_dict().items()
    }
    save_file(state, str(path), metadata=metadata)


def read_metadata(path: str | Path) -> dict[str, object]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata() or {}
    if metadata.get("kind") != KIND:
        raise ValueError(f"{path} is not a JPEG pre-clean network (kind {metadata.get('kind')!r})")
    return {key: json.loads(value) for key, value in metadata.items() if key != "kind"}


def load(path: str | Path, device: torch.device | str = "cpu") -> Deblocker:
    """A saved pre-clean network, in eval mode; ValueError for another kind of file or weights
    that are not finite."""
    metadata = read_metadata(path)
    network = Deblocker(DeblockConfig(**metadata["config"]))  # type: ignore[arg-type]
    state = load_file(str(path))
    for key, value in state.items():
        if not torch.isfinite(value).all():
            raise ValueError(f"{path}: weight {key} is not finite")
    network.load_state_dict(state)
    return network.to(device).eval()


def parameter_count(network: nn.Module) -> int:
    return sum(math.prod(p.shape) for p in network.parameters())
