"""The cascade's stages and the rules for which a request runs; torch-free, so the API and the
service supervisor can plan jobs without loading torch."""

from __future__ import annotations

import math

STAGES: tuple[str, ...] = ("base64", "sr256", "sr1024")
STAGE_OUTPUT: dict[str, int] = {"base64": 64, "sr256": 256, "sr1024": 1024}
STAGE_INPUT: dict[str, int] = {"sr256": 64, "sr1024": 256}
SIZES: tuple[int, ...] = tuple(STAGE_OUTPUT.values())
SCALES: tuple[int, ...] = (4, 16)
# Upscales' fidelity-realism default (1: the most faithful output, 0: the full sample).
DEFAULT_FIDELITY = 0.5


def stage_seed(seed: int, stage: str) -> int:
    """The seed a stage uses for an item: stable, distinct per stage, within int64."""
    return (int(seed) + 1_000_003 * STAGES.index(stage)) % (2**63)


def generation_stages(size: int) -> list[str]:
    """Stages a generation at `size` pixels runs through, in order."""
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size}")
    return [name for name in STAGES if STAGE_OUTPUT[name] <= size]


def upscale_stages(height: int, width: int, scale: int) -> list[str]:
    """Stages an upscale runs: 4x enters at the stage whose native input is nearest the input's
    longer side (64 -> sr256, 256 -> sr1024); 16x runs sr256 then sr1024."""
    if scale == 16:
        return ["sr256", "sr1024"]
    if scale != 4:
        raise ValueError(f"scale must be one of {list(SCALES)}, got {scale}")
    side = max(height, width)
    return [min(STAGE_INPUT, key=lambda name: abs(math.log(side / STAGE_INPUT[name])))]
