"""SR3 UNet in the Janspiry/Image-Super-Resolution-via-Iterative-Refinement layout.

Written from the architecture description in shared/parity/sr3/ANATOMY.md; module and
parameter names reproduce the reference state dict key for key, so released `_gen.pth`
weights (with the `denoise_fn.` prefix stripped) load with `strict=True`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cascade.pointwise import linear_1x1, pointwise_conv

# Reference constructor names that differ from the SR3Config fields.
_RENAMED = {f"{n}_channel": f"{n}_channels" for n in ("in", "out", "inner")}
# Defaults of the reference constructor, so a partial kwargs dict builds what `UNet(**kwargs)`
# would. Its own `attn_res=(8)` is an int that crashes the constructor; (8,) is what it means.
_REFERENCE_DEFAULTS = {
    "in_channel": 6,
    "out_channel": 3,
    "inner_channel": 32,
    "norm_groups": 32,
    "channel_mults": (1, 2, 4, 8, 8),
    "attn_res": (8,),
    "res_blocks": 3,
    "dropout": 0.0,
    "image_size": 128,
}


@dataclass(frozen=True)
class SR3Config:
    """SR3 UNet architecture (Janspiry layout); stored with every checkpoint."""

    in_channels: int = 6
    out_channels: int = 3
    inner_channels: int = 64
    # GroupNorm affine parameters are [C] whatever the group count, so a state dict cannot
    # tell the group count: it must come from the training config (32 or 16 for the releases).
    norm_groups: int = 32
    channel_mults: tuple[int, ...] = (1, 2, 4, 8, 8)
    attn_res: tuple[int, ...] = (16,)
    res_blocks: int = 2
    dropout: float = 0.0
    # Only decides at which level attention sits; the model runs at any divisible size.
    image_size: int = 128
    # Project-native: an extra embedding of the cascade's conditioning-augmentation level.
    condition_augmentation: bool = False

    def __post_init__(self) -> None:
        # JSON round-trips hand back lists; tuples keep the config hashable and comparable.
        object.__setattr__(self, "channel_mults", tuple(int(m) for m in self.channel_mults))
        object.__setattr__(self, "attn_res", tuple(int(r) for r in self.attn_res))
        object.__setattr__(self, "dropout", float(self.dropout))

    @property
    def num_classes(self) -> None:
        """SR3 networks are not class-conditional (shared config interface)."""
        return None

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (one halving per extra level)."""
        return 2 ** (len(self.channel_mults) - 1)

    @classmethod
    def from_reference_kwargs(cls, kwargs: Mapping[str, object]) -> SR3Config:
        """Config from the reference `UNet(...)` keyword arguments (or a config's `unet` block)."""
        kw = dict(kwargs)
        if "channel_multiplier" in kw:  # the name used in the reference JSON configs
            kw["channel_mults"] = kw.pop("channel_multiplier")
        if not kw.pop("with_noise_level_emb", True):
            raise ValueError("SR3 UNets without the noise level embedding are not supported")
        unknown = sorted(set(kw) - set(_REFERENCE_DEFAULTS))
        if unknown:
            raise ValueError(f"unknown SR3 UNet kwargs: {unknown}")
        merged = {**_REFERENCE_DEFAULTS, **kw}
        if merged["norm_groups"] is None:  # define_G's fallback for a missing/null value
            merged["norm_groups"] = 32
        if isinstance(merged["attn_res"], int):
            merged["attn_res"] = (merged["attn_res"],)
        return cls(**{_RENAMED.get(k, k): v for k, v in merged.items()})


class PositionalEncoding(nn.Module):
    """Sinusoidal encoding of the continuous noise level sqrt(gamma) (sin half first)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, noise_level: Tensor) -> Tensor:
        # At least float32: the level is a fraction in (0, 1] and half precision would blur it.
        level = noise_level.to(torch.promote_types(noise_level.dtype, torch.float32))
        count = self.dim // 2
        step = torch.arange(count, dtype=level.dtype, device=level.device) / count
        enc = level.unsqueeze(-1) * torch.exp(-math.log(1e4) * step)
        return torch.cat([enc.sin(), enc.cos()], dim=-1)


class NoiseLevelMLP(nn.Sequential):
    """Noise level embedding: PositionalEncoding -> Linear(C, 4C) -> Swish -> Linear(4C, C)."""

    def __init__(self, dim: int) -> None:
        super().__init__(
            PositionalEncoding(dim), nn.Linear(dim, dim * 4), nn.SiLU(), nn.Linear(dim * 4, dim)
        )

    def forward(self, noise_level: Tensor) -> Tensor:
        # Match the Linear's dtype so a .half()/.bfloat16() model works without autocast.
        h = self[0](noise_level).to(self[1].weight.dtype)
        return self[3](self[2](self[1](h)))


class FeatureWiseAffine(nn.Module):
    """Noise embedding injected as an additive per-channel bias (the reference never uses FiLM)."""

    def __init__(self, emb_dim: int, channels: int) -> None:
        super().__init__()
        self.noise_func = nn.Sequential(nn.Linear(emb_dim, channels))

    def bias(self, emb: Tensor) -> Tensor:
        """The per-channel bias [B, C, 1, 1] for embedding `emb`."""
        out = self.noise_func(emb)
        return out.view(out.shape[0], -1, 1, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        return x + self.bias(emb)


class Block(nn.Module):
    """GroupNorm -> Swish -> Dropout -> Conv3x3."""

    def __init__(self, dim: int, dim_out: int, groups: int, dropout: float = 0.0) -> None:
        super().__init__()
        # Identity for p=0 keeps the conv at index 3 either way, as the reference keys expect.
        self.block = nn.Sequential(
            nn.GroupNorm(groups, dim),
            nn.SiLU(),
            nn.Dropout(dropout) if dropout != 0 else nn.Identity(),
            nn.Conv2d(dim, dim_out, 3, padding=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        norm, _, dropout, conv = self.block
        # Swish in place on the norm's fresh output: the same numbers as the Sequential, one
        # full-size buffer fewer (on the CPU the out-of-place SiLU ran at half the speed).
        return conv(dropout(F.silu(norm(x), inplace=True)))


class ResnetBlock(nn.Module):
    """Residual block; the noise bias enters between the two convs, no output rescaling."""

    def __init__(self, dim: int, dim_out: int, emb_dim: int, groups: int, dropout: float) -> None:
        super().__init__()
        self.noise_func = FeatureWiseAffine(emb_dim, dim_out)
        self.block1 = Block(dim, dim_out, groups)
        self.block2 = Block(dim_out, dim_out, groups, dropout)
        self.res_conv = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        # In-place adds into the convolutions' fresh outputs (their backward needs neither).
        h = self.block1(x)
        h += self.noise_func.bias(emb)
        out = self.block2(h)
        out += pointwise_conv(self.res_conv, x)
        return out


class SelfAttention(nn.Module):
    """Single-head spatial self-attention with a residual connection."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Conv2d(channels, channels * 3, 1, bias=False)
        self.out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        # Token-major [B, HW, C] (a view of a channels-last input), so both 1x1 projections are
        # matrix products. [B, HW, 3C] -> one copy to contiguous [3, B, HW, C] -> three
        # contiguous [B, 1, HW, C], the layout SDPA's fused kernels take. Its default scale
        # 1/sqrt(C) is the reference's.
        tokens = self.norm(x).flatten(2).mT
        qkv = linear_1x1(self.qkv, tokens).view(b, h * w, 3, c).permute(2, 0, 1, 3)
        q, k, v = qkv.contiguous().unsqueeze(2).unbind(0)
        out = linear_1x1(self.out, F.scaled_dot_product_attention(q, k, v).squeeze(1))
        # [B, HW, C] -> [B, C, H, W] is a view (channels-last strides); x first keeps its layout.
        return x + out.mT.reshape(b, c, h, w)


class ResnetBlocWithAttn(nn.Module):
    """ResnetBlock optionally followed by self-attention (reference spelling `Bloc`)."""

    def __init__(
        self, dim: int, dim_out: int, emb_dim: int, groups: int, dropout: float, with_attn: bool
    ) -> None:
        super().__init__()
        self.res_block = ResnetBlock(dim, dim_out, emb_dim, groups, dropout)
        self.attn = SelfAttention(dim_out, groups) if with_attn else None

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        x = self.res_block(x, emb)
        return self.attn(x) if self.attn is not None else x


class Downsample(nn.Module):
    """Stride-2 Conv3x3."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Nearest-neighbour x2 then Conv3x3."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class SR3UNet(nn.Module):
    """SR3 noise predictor: eps = UNet(cat([condition, y_t]), sqrt(gamma))."""

    def __init__(self, config: SR3Config) -> None:
        super().__init__()
        self.config = cfg = config
        inner, groups, drop = cfg.inner_channels, cfg.norm_groups, cfg.dropout
        self.noise_level_mlp = NoiseLevelMLP(inner)
        self.aug_level_mlp: NoiseLevelMLP | None = None
        if cfg.condition_augmentation:
            self.aug_level_mlp = NoiseLevelMLP(inner)
            # Zero output layer: a fresh flag-on model computes exactly what the flag-off one does.
            nn.init.zeros_(self.aug_level_mlp[3].weight)
            nn.init.zeros_(self.aug_level_mlp[3].bias)

        def rb(dim: int, dim_out: int, attn: bool) -> ResnetBlocWithAttn:
            return ResnetBlocWithAttn(dim, dim_out, inner, groups, drop, attn)

        n_levels = len(cfg.channel_mults)
        now_res, pre = cfg.image_size, inner
        skip_channels = [inner]
        downs: list[nn.Module] = [nn.Conv2d(cfg.in_channels, inner, 3, padding=1)]
        for level, mult in enumerate(cfg.channel_mults):
            for _ in range(cfg.res_blocks):
                downs.append(rb(pre, inner * mult, now_res in cfg.attn_res))
                pre = inner * mult
                skip_channels.append(pre)
            if level != n_levels - 1:
                downs.append(Downsample(pre))
                skip_channels.append(pre)
                now_res //= 2
        self.downs = nn.ModuleList(downs)
        # Mid attention is unconditional, whatever attn_res says.
        self.mid = nn.ModuleList([rb(pre, pre, True), rb(pre, pre, False)])
        ups: list[nn.Module] = []
        for level in reversed(range(n_levels)):
            # One block more than in the down path: it consumes the Downsample/conv_in skip.
            for _ in range(cfg.res_blocks + 1):
                out = inner * cfg.channel_mults[level]
                ups.append(rb(pre + skip_channels.pop(), out, now_res in cfg.attn_res))
                pre = out
            if level != 0:
                ups.append(Upsample(pre))
                now_res *= 2
        self.ups = nn.ModuleList(ups)
        self.final_conv = Block(pre, cfg.out_channels, groups)

    @staticmethod
    def _per_sample(level: Tensor, batch: int, name: str) -> Tensor:
        """Flatten a [B] / [B, 1] (or single-value) level to [B]."""
        flat = level.reshape(-1)
        if flat.numel() == 1 and batch != 1:
            flat = flat.expand(batch)
        if flat.numel() != batch:
            raise ValueError(
                f"{name} must have shape [B] or [B, 1] with B={batch}, got {tuple(level.shape)}"
            )
        return flat

    def forward(self, x: Tensor, noise_level: Tensor, aug_level: Tensor | None = None) -> Tensor:
        """Predict eps from x = cat([condition, y_t], 1) at noise level sqrt(gamma)."""
        b, _, h, w = x.shape
        m = self.config.size_multiple
        if h % m or w % m:
            raise ValueError(
                f"SR3UNet input height and width must be multiples of {m}, got {h}x{w}"
            )
        emb = self.noise_level_mlp(self._per_sample(noise_level, b, "noise_level"))
        if self.aug_level_mlp is not None:
            aug = torch.zeros(b, device=x.device) if aug_level is None else aug_level
            emb = emb + self.aug_level_mlp(self._per_sample(aug, b, "aug_level"))
        elif aug_level is not None and bool((aug_level != 0).any()):
            raise ValueError(
                "aug_level given but this SR3UNet has condition_augmentation=False; "
                "pass None (or zeros) or build it with condition_augmentation=True"
            )
        skips: list[Tensor] = []
        for layer in self.downs:
            x = layer(x, emb) if isinstance(layer, ResnetBlocWithAttn) else layer(x)
            skips.append(x)
        for layer in self.mid:
            x = layer(x, emb)
        for layer in self.ups:
            if isinstance(layer, ResnetBlocWithAttn):
                x = layer(torch.cat([x, skips.pop()], dim=1), emb)
            else:
                x = layer(x)
        return self.final_conv(x)


def infer_sr3_config(
    state_dict: Mapping[str, Tensor], norm_groups: int | None = None, image_size: int | None = None
) -> SR3Config:
    """Recover an SR3Config from the key names and shapes of an unprefixed SR3 UNet state dict.

    Widths, res_blocks and attention levels come from the `downs.*` keys. Attention is
    found per level, so `attn_res` is expressed relative to `image_size`; without one, the
    default size (128, or 2**(levels-1) if larger) is used: any size divisible by
    2**(levels-1) puts attention at the same level indices, so the model is identical.
    `norm_groups` (default 32) and `dropout` (0) are not stored in the weights.
    """
    if "downs.0.weight" not in state_dict:
        raise KeyError("no 'downs.0.weight': not an SR3 UNet state dict (strip 'denoise_fn.'?)")
    inner, in_channels = state_dict["downs.0.weight"].shape[:2]
    out_channels = state_dict["final_conv.block.3.weight"].shape[0]
    levels: list[list[tuple[int, bool]]] = [[]]  # per level: (width, has attention) per block
    i = 1
    while True:
        prefix = f"downs.{i}."
        if prefix + "conv.weight" in state_dict:
            levels.append([])
        elif prefix + "res_block.block1.block.3.weight" in state_dict:
            width = state_dict[prefix + "res_block.block1.block.3.weight"].shape[0]
            levels[-1].append((width, prefix + "attn.qkv.weight" in state_dict))
        else:
            break
        i += 1
    counts = {len(blocks) for blocks in levels}
    widths = [{w for w, _ in blocks} for blocks in levels]
    if len(counts) != 1 or 0 in counts or any(len(ws) != 1 for ws in widths):
        raise ValueError("inconsistent SR3 down path: unequal res_blocks or widths per level")
    if any(next(iter(ws)) % inner for ws in widths):
        raise ValueError(f"level widths are not multiples of inner_channels={inner}")
    multiple = 2 ** (len(levels) - 1)
    if image_size is None:
        image_size = max(SR3Config.image_size, multiple)
    elif image_size % multiple:
        raise ValueError(f"image_size must be a multiple of {multiple}, got {image_size}")
    return SR3Config(
        in_channels=int(in_channels),
        out_channels=int(out_channels),
        inner_channels=int(inner),
        norm_groups=32 if norm_groups is None else norm_groups,
        channel_mults=tuple(next(iter(ws)) // inner for ws in widths),
        attn_res=tuple(image_size >> li for li, bl in enumerate(levels) if any(a for _, a in bl)),
        res_blocks=counts.pop(),
        image_size=image_size,
        condition_augmentation="aug_level_mlp.1.weight" in state_dict,
    )
