"""The network families, one row each: the config that describes a network, the module that
builds it, and the wrapper that turns it into the denoiser contract. Everything that differs by
family is looked up here rather than switched on by name."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import nn

from cascade.adm import ADMConfig, ADMUNet
from cascade.denoiser import ADMDenoiser, Denoiser, SR3Denoiser
from cascade.sr3 import SR3Config, SR3UNet

FamilyName = Literal["sr3", "adm"]


@dataclass(frozen=True)
class Family:
    """How one network family is configured, built and wrapped."""

    config: type[SR3Config] | type[ADMConfig]
    network: Callable[..., nn.Module]
    denoiser: Callable[[nn.Module], Denoiser]


FAMILIES: dict[str, Family] = {
    "sr3": Family(SR3Config, SR3UNet, SR3Denoiser),  # Janspiry's SR3
    "adm": Family(ADMConfig, ADMUNet, ADMDenoiser),  # openai/guided-diffusion
}
