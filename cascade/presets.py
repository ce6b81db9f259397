"""Named model presets: the released checkpoints, the cascade's native stages, tiny test models.

A `ModelSpec` is everything needed to rebuild a model with no flags: the network family and its
architecture, the training noise schedule, and what the model does. Every checkpoint carries one.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

from cascade.adm import ADMConfig
from cascade.families import FAMILIES, FamilyName
from cascade.schedule import ScheduleConfig
from cascade.sr3 import SR3Config

Task = Literal["generate", "upscale"]
Target = Literal["eps", "v", "x0"]  # what the network predicts
Diffused = Literal["image", "residual"]  # what the diffusion process runs on

NULL_CLASS = 1000  # ImageNet has 1000 classes; native bases learn one more "no class" label


@dataclass(frozen=True)
class ModelSpec:
    """A model's architecture, training schedule and task; enough to rebuild it."""

    family: FamilyName
    network: SR3Config | ADMConfig
    schedule: ScheduleConfig
    task: Task
    image_size: int  # native output size in pixels
    scale: int = 1  # output size / input size of an upscaler
    null_class: int | None = None  # label of the unconditional branch (classifier-free guidance)
    description: str = ""
    # Parameterisation (Salimans & Ho 2022 for v; SRDiff/ResShift for the residual). Released
    # weights predict eps of the image; the defaults keep their checkpoints loading unchanged.
    prediction: Target = "eps"
    diffused: Diffused = "image"
    # The residual diffused is r = residual_scale * (y0 - up(x)), up = the bicubic-upsampled
    # condition: photos' residual std is ~0.11, so 4 brings it near the unit scale of the noise.
    residual_scale: float = 1.0
    classes: tuple[int, ...] = ()  # class ids the model was trained on; () means every id
    # A distilled student (`cascade.distill`): per step count it was trained for, the schedule
    # indices its deterministic DDIM evaluates, from the top down. () for every other model.
    few_step: tuple[tuple[int, ...], ...] = ()

    def __post_init__(self) -> None:
        if self.prediction not in ("eps", "v", "x0"):
            raise ValueError(f"prediction must be eps, v or x0, got {self.prediction!r}")
        if self.diffused not in ("image", "residual"):
            raise ValueError(f"diffused must be image or residual, got {self.diffused!r}")
        if self.diffused == "residual" and (self.task != "upscale" or self.residual_scale <= 0):
            raise ValueError("a residual model must be an upscaler with residual_scale > 0")

    @property
    def input_size(self) -> int | None:
        return self.image_size // self.scale if self.task == "upscale" else None

    @property
    def class_conditional(self) -> bool:
        return self.network.num_classes is not None

    @property
    def condition_augmentation(self) -> bool:
        return self.network.condition_augmentation

    def build(self) -> nn.Module:
        return FAMILIES[self.family].network(self.network)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelSpec:
        data = dict(data)
        config_type = FAMILIES[data["family"]].config
        network = dict(data.pop("network"))
        for key, value in network.items():
            if isinstance(value, list):
                network[key] = tuple(value)
        data["classes"] = tuple(data.get("classes", ()))
        data["few_step"] = tuple(tuple(kept) for kept in data.get("few_step", ()))
        return cls(
            network=config_type(**network),
            schedule=ScheduleConfig(**data.pop("schedule")),
            **data,
        )

    @classmethod
    def from_json(cls, text: str) -> ModelSpec:
        return cls.from_dict(json.loads(text))


SR3_SCHEDULE = ScheduleConfig("sr3", "linear", 2000, 1e-6, 1e-2)  # every released SR3 config
ADM_COSINE = ScheduleConfig("adm", "cosine", 1000)
ADM_LINEAR = ScheduleConfig("adm", "linear", 1000)
RESIDUAL_SCALE = 4.0


def _adm_flags(**flags: Any) -> ADMConfig:
    return ADMConfig.from_flags(**flags)


def _base(
    model_channels: int,
    mult: tuple[int, ...],
    blocks: int,
    attention: tuple[int, ...],
    head_channels: int,
    description: str,
) -> ModelSpec:
    """A native class-conditional 64x64 base: ADM UNet with a null class for guidance."""
    network = ADMConfig(
        image_size=64,
        model_channels=model_channels,
        out_channels=3,
        num_res_blocks=blocks,
        attention_resolutions=attention,
        channel_mult=mult,
        num_classes=NULL_CLASS + 1,
        num_head_channels=head_channels,
        attention_order="new",
        dropout=0.1,
    )
    return ModelSpec(
        "adm",
        network,
        ADM_COSINE,
        "generate",
        64,
        null_class=NULL_CLASS,
        description=description,
        # v keeps x0 well-conditioned at the cosine schedule's top level, where eps-prediction
        # multiplies any error by 1/sqrt(alpha_bar) ~ 2e4 (flat grey images for some seeds).
        prediction="v",
    )


def _sr(
    size: int,
    inner: int,
    groups: int,
    mults: tuple[int, ...],
    blocks: int,
    attn_res: tuple[int, ...],
    description: str,
) -> ModelSpec:
    """A native 4x SR3 upscaler with conditioning augmentation (CDM), diffusing the residual over
    the bicubic upsample with v-prediction (colour exact by construction, 20-step solvers)."""
    network = SR3Config(
        inner_channels=inner,
        norm_groups=groups,
        channel_mults=mults,
        attn_res=attn_res,
        res_blocks=blocks,
        image_size=size,
        condition_augmentation=True,
    )
    return ModelSpec(
        "sr3",
        network,
        SR3_SCHEDULE,
        "upscale",
        size,
        scale=4,
        description=description,
        prediction="v",
        diffused="residual",
        residual_scale=RESIDUAL_SCALE,
    )


PRESETS: dict[str, ModelSpec] = {
    # Released checkpoints (flags from the SR3 configs and the guided-diffusion README).
    "sr3-16-128": ModelSpec(
        "sr3",
        SR3Config(
            inner_channels=64,
            norm_groups=32,
            channel_mults=(1, 2, 4, 8, 8),
            attn_res=(16,),
            res_blocks=2,
            dropout=0.2,
            image_size=128,
        ),
        SR3_SCHEDULE,
        "upscale",
        128,
        scale=8,
        description="SR3 16->128 faces (Janspiry I640000_E37, sr_sr3_16_128.json)",
    ),
    "sr3-64-512": ModelSpec(
        "sr3",
        SR3Config(
            inner_channels=64,
            norm_groups=16,
            channel_mults=(1, 2, 4, 8, 16),
            attn_res=(),
            res_blocks=1,
            image_size=512,
        ),
        SR3_SCHEDULE,
        "upscale",
        512,
        scale=8,
        description="SR3 64->512 faces (Janspiry I830000_E32, sr_sr3_64_512.json)",
    ),
    "adm-64": ModelSpec(
        "adm",
        _adm_flags(
            attention_resolutions="32,16,8",
            class_cond=True,
            dropout=0.1,
            image_size=64,
            learn_sigma=True,
            num_channels=192,
            num_head_channels=64,
            num_res_blocks=3,
            resblock_updown=True,
            use_new_attention_order=True,
            use_scale_shift_norm=True,
        ),
        ADM_COSINE,
        "generate",
        64,
        description="ADM 64x64 class-conditional ImageNet (guided-diffusion 64x64_diffusion.pt)",
    ),
    "adm-64-256": ModelSpec(
        "adm",
        _adm_flags(
            attention_resolutions="32,16,8",
            class_cond=True,
            large_size=256,
            small_size=64,
            learn_sigma=True,
            num_channels=192,
            num_heads=4,
            num_res_blocks=2,
            resblock_updown=True,
            use_scale_shift_norm=True,
        ),
        ADM_LINEAR,
        "upscale",
        256,
        scale=4,
        description="ADM 64->256 upsampler (guided-diffusion 64_256_upsampler.pt)",
    ),
    # Native stages at the sizes the papers used (SR3 Table A.1; ADM's 64x64 base).
    "base64": _base(
        192,
        (1, 2, 3, 4),
        3,
        (2, 4, 8),
        64,
        "native 64x64 class-conditional base, ADM-64 sized, null class for CFG",
    ),
    "sr256": _sr(
        256,
        128,
        32,
        (1, 2, 4, 4, 8, 8),
        3,
        (16,),
        "native 64->256 SR3 (SR3 paper sizes) with conditioning augmentation",
    ),
    "sr1024": _sr(
        1024,
        16,
        16,
        (1, 2, 4, 8, 16, 32, 32, 32),
        2,
        (),
        "native 256->1024 SR3 (SR3 paper sizes) with conditioning augmentation",
    ),
    # Small: the demo weights, sized to train on a 2-core CPU in about an hour (~1 s per step of
    # 16 crops of 64 px with 2 threads) and to fit a few MB in fp16.
    "base64-small": _base(
        32, (1, 2, 2), 1, (4,), 32, "small 64x64 class-conditional base for demo weights"
    ),
    "sr256-small": _sr(256, 24, 8, (1, 2, 4, 4), 1, (), "small 64->256 SR3 for demo weights"),
    "sr1024-small": _sr(
        1024, 16, 8, (1, 2, 4, 4, 4, 4), 1, (), "small 256->1024 SR3 for demo weights"
    ),
    # Tiny: random-weight stand-ins for tests and CPU demos (milliseconds per step).
    # ADM's GroupNorm has 32 groups, so 32 channels is the narrowest ADM network.
    "base64-tiny": _base(32, (1, 1, 2), 1, (4,), 32, "tiny base for tests"),
    # SR3 always attends in the middle block: enough levels keep it at 32x32 (1024 tokens).
    "sr256-tiny": _sr(256, 8, 4, (1, 2, 2, 2), 1, (), "tiny 64->256 upscaler for tests"),
    "sr1024-tiny": _sr(1024, 4, 2, (1, 2, 2, 2, 2, 2), 1, (), "tiny 256->1024 upscaler for tests"),
}


def get_preset(name: str) -> ModelSpec:
    """The named preset, or a ValueError listing the names."""
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
