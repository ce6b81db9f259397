"""ADM UNet and super-resolution UNet (guided-diffusion layout and state-dict names)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cascade.pointwise import linear_1x1, pointwise_conv

# The reference builders' channel_mult per image size when the flag is "".
_BASE_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    64: (1, 2, 3, 4),
    128: (1, 1, 2, 3, 4),
    256: (1, 1, 2, 2, 4, 4),
    512: (0.5, 1, 1, 2, 2, 4, 4),
}
_SR_CHANNEL_MULT: dict[int, tuple[float, ...]] = {
    64: (1, 2, 3, 4),
    256: (1, 1, 2, 2, 4, 4),
    512: (1, 1, 2, 2, 4, 4),
}
# Model flags and their model_and_diffusion_defaults() values, which the scripts start from.
_FLAG_DEFAULTS: dict[str, Any] = {
    "image_size": 64,
    "num_channels": 128,
    "num_res_blocks": 2,
    "num_heads": 4,
    "num_heads_upsample": -1,
    "num_head_channels": -1,
    "attention_resolutions": "16,8",
    "channel_mult": "",
    "dropout": 0.0,
    "class_cond": False,
    "learn_sigma": False,
    "use_scale_shift_norm": True,
    "resblock_updown": False,
    "use_new_attention_order": False,
}
# Flags that configure the diffusion process or the runtime, not the network.
_IGNORED_FLAGS = frozenset(
    "use_fp16 use_checkpoint diffusion_steps noise_schedule timestep_respacing use_kl "
    "predict_xstart rescale_timesteps rescale_learned_sigmas sigma_small".split()
)
_NUM_CLASSES = 1000


def _flag_bool(value: Any) -> bool:
    """Parse a bool flag the way the reference's str2bool does, accepting real bools too."""
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("yes", "true", "t", "y", "1"):
            return True
        if low in ("no", "false", "f", "n", "0"):
            return False
        raise ValueError(f"not a boolean flag value: {value!r}")
    return bool(value)


def _mult(value: float | str) -> float:
    """One channel multiplier, kept an int when integral so configs compare and print cleanly."""
    v = float(value)
    return int(v) if v.is_integer() else v


@dataclass(frozen=True)
class ADMConfig:
    """ADM UNet architecture (guided-diffusion layout); stored with every checkpoint."""

    image_size: int = 64
    in_channels: int = 3  # image channels; SuperRes doubles it internally
    model_channels: int = 192
    out_channels: int = 6  # 6 = eps + learned-range variance value v
    num_res_blocks: int = 3
    # Downsample factors ds (resolved, as in the reference UNetModel ctor), not pixels.
    attention_resolutions: tuple[int, ...] = (2, 4, 8)
    dropout: float = 0.0
    channel_mult: tuple[float, ...] = (1, 2, 3, 4)
    # None = unconditional; this project's native base uses 1001 (index 1000 = null class).
    num_classes: int | None = 1000
    num_heads: int = 4
    num_head_channels: int = -1
    num_heads_upsample: int = -1
    use_scale_shift_norm: bool = True
    resblock_updown: bool = True
    attention_order: Literal["new", "legacy"] = "legacy"  # QKVAttention vs QKVAttentionLegacy
    super_resolution: bool = False  # SuperResModel: concatenates bilinear-upsampled low_res

    def __post_init__(self) -> None:
        # JSON round trips turn tuples into lists; normalise so configs stay hashable and equal.
        object.__setattr__(self, "attention_resolutions", tuple(self.attention_resolutions))
        object.__setattr__(self, "channel_mult", tuple(_mult(m) for m in self.channel_mult))
        if self.attention_order not in ("new", "legacy"):
            raise ValueError(
                f"attention_order must be 'new' or 'legacy', not {self.attention_order!r}"
            )

    @property
    def size_multiple(self) -> int:
        """Input height and width must be multiples of this (one halving per level but the last)."""
        return 2 ** (len(self.channel_mult) - 1)

    @property
    def condition_augmentation(self) -> bool:
        """ADM's networks take no conditioning-augmentation level (shared config interface)."""
        return False

    @property
    def learn_sigma(self) -> bool:
        """Whether the output carries the learned-range variance channels."""
        return self.out_channels == 2 * self.in_channels

    @classmethod
    def from_flags(cls, **flags: Any) -> ADMConfig:
        """Resolve guided-diffusion script flags (create_model / sr_create_model) into a config."""
        unknown = set(flags) - set(_FLAG_DEFAULTS) - _IGNORED_FLAGS - {"large_size", "small_size"}
        if unknown:
            raise ValueError(f"unknown ADM flags: {sorted(unknown)}")
        get = {**_FLAG_DEFAULTS, **flags}
        super_resolution = "large_size" in flags
        size = int(get["large_size"] if super_resolution else get["image_size"])
        mult = get["channel_mult"]
        if isinstance(mult, str):
            mult = tuple(_mult(m) for m in mult.split(",")) if mult.strip() else ()
        if not mult:
            table = _SR_CHANNEL_MULT if super_resolution else _BASE_CHANNEL_MULT
            if size not in table:
                raise ValueError(f"no default channel_mult for size {size}; pass channel_mult")
            mult = table[size]
        res = get["attention_resolutions"]
        pixels = [int(r) for r in res.split(",")] if isinstance(res, str) else [int(r) for r in res]
        learn_sigma = _flag_bool(get["learn_sigma"])
        return cls(
            image_size=size,
            in_channels=3,
            model_channels=int(get["num_channels"]),
            out_channels=6 if learn_sigma else 3,
            num_res_blocks=int(get["num_res_blocks"]),
            attention_resolutions=tuple(size // r for r in pixels),
            dropout=float(get["dropout"]),
            channel_mult=tuple(mult),
            num_classes=_NUM_CLASSES if _flag_bool(get["class_cond"]) else None,
            num_heads=int(get["num_heads"]),
            num_head_channels=int(get["num_head_channels"]),
            num_heads_upsample=int(get["num_heads_upsample"]),
            use_scale_shift_norm=_flag_bool(get["use_scale_shift_norm"]),
            resblock_updown=_flag_bool(get["resblock_updown"]),
            attention_order="new" if _flag_bool(get["use_new_attention_order"]) else "legacy",
            super_resolution=super_resolution,
        )


def timestep_embedding(t: Tensor, dim: int, max_period: int = 10000) -> Tensor:
    """Sinusoidal embedding [cos | sin] of (possibly fractional) timesteps, shape (N, dim)."""
    half = dim // 2
    # Same operation order as the reference so the float32 frequencies match bit for bit.
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm computed in float32 and cast back, so half-precision runs keep stable stats."""

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(x.float()).to(x.dtype)


def _norm(channels: int) -> GroupNorm32:
    return GroupNorm32(32, channels)


class Upsample(nn.Module):
    """Nearest x2 followed by a 3x3 conv (used only when resblock_updown is off)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Downsample(nn.Module):
    """Strided 3x3 conv (used only when resblock_updown is off)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.op(x)


class ResBlock(nn.Module):
    """Residual block conditioned on the embedding, optionally resampling (BigGAN-style)."""

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        dropout: float,
        out_channels: int,
        use_scale_shift_norm: bool,
        resample: Literal["up", "down"] | None = None,
    ) -> None:
        super().__init__()
        self.resample = resample
        self.use_scale_shift_norm = use_scale_shift_norm
        self.in_layers = nn.Sequential(
            _norm(channels), nn.SiLU(), nn.Conv2d(channels, out_channels, 3, padding=1)
        )
        emb_out = 2 * out_channels if use_scale_shift_norm else out_channels
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_channels, emb_out))
        self.out_layers = nn.Sequential(
            _norm(out_channels),
            nn.SiLU(),
            nn.Dropout(p=dropout),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        nn.init.zeros_(self.out_layers[3].weight)
        nn.init.zeros_(self.out_layers[3].bias)
        self.skip_connection: nn.Module = (
            nn.Identity() if out_channels == channels else nn.Conv2d(channels, out_channels, 1)
        )

    def _resample(self, x: Tensor) -> Tensor:
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return F.avg_pool2d(x, kernel_size=2, stride=2)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        # Swish runs in place on the norms' fresh outputs and the adds go into fresh conv
        # outputs: the reference's numbers with fewer full-size buffers (on the CPU the
        # out-of-place SiLU ran at half the speed). emb is shared by every block: not in place.
        in_norm, _, in_conv = self.in_layers
        h = F.silu(in_norm(x), inplace=True)
        if self.resample is not None:
            # Resample between the activation and the conv, and resample the skip path alike.
            h, x = self._resample(h), self._resample(x)
        h = in_conv(h)
        emb_out = self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        out_norm, _, dropout, out_conv = self.out_layers
        if self.use_scale_shift_norm:
            scale, shift = emb_out.chunk(2, dim=1)
            h = torch.addcmul(shift, out_norm(h), 1 + scale)  # norm(h) * (1 + scale) + shift
        else:
            h += emb_out
            h = out_norm(h)
        h = out_conv(dropout(F.silu(h, inplace=True)))
        h += pointwise_conv(self.skip_connection, x)
        return h


class AttentionBlock(nn.Module):
    """Spatial self-attention with Conv1d qkv/proj_out, in the new or legacy head layout."""

    def __init__(self, channels: int, num_heads: int, order: Literal["new", "legacy"]) -> None:
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.order = order
        self.norm = _norm(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = nn.Conv1d(channels, channels, 1)
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c, *spatial = x.shape
        # Token-major (B, tokens, C), a view of a channels-last input, so the Conv1d projections
        # are matrix products on their weights.
        tokens = self.norm(x).flatten(2).mT
        qkv = linear_1x1(self.qkv, tokens)  # (B, tokens, 3C)
        heads, ch, length = self.num_heads, c // self.num_heads, tokens.shape[1]
        if self.order == "new":  # [q all heads | k all heads | v all heads]
            qkv = qkv.view(b, length, 3, heads, ch)
        else:  # per head [q_h, k_h, v_h]
            qkv = qkv.view(b, length, heads, 3, ch).transpose(2, 3)
        # One copy to contiguous (3, B, heads, tokens, ch): the layout SDPA's fused (flash /
        # efficient) kernels take; transposed views fall back to the slow math kernel.
        q, k, v = qkv.permute(2, 0, 3, 1, 4).contiguous().unbind(0)
        # SDPA's default 1/sqrt(ch) equals the reference's ch^-1/4 applied to q and to k.
        a = F.scaled_dot_product_attention(q, k, v)  # (B, heads, tokens, ch)
        h = linear_1x1(self.proj_out, a.transpose(1, 2).reshape(b, length, c))
        # (B, tokens, C) -> (B, C, *spatial): channels-last strides; x first keeps its layout.
        return x + h.mT.reshape(b, c, *spatial)


class _EmbedSequential(nn.Sequential):
    """Sequential that hands the embedding to the ResBlocks it holds."""

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class ADMUNet(nn.Module):
    """guided-diffusion UNetModel, or SuperResModel when config.super_resolution is set."""

    def __init__(self, config: ADMConfig) -> None:
        super().__init__()
        self.config = cfg = config
        mc = cfg.model_channels
        emb_dim = 4 * mc
        heads_up = cfg.num_heads if cfg.num_heads_upsample == -1 else cfg.num_heads_upsample

        def res(ch_in: int, ch_out: int, resample: Literal["up", "down"] | None = None) -> ResBlock:
            return ResBlock(ch_in, emb_dim, cfg.dropout, ch_out, cfg.use_scale_shift_norm, resample)

        def attn(ch: int, num_heads: int) -> AttentionBlock:
            if cfg.num_head_channels != -1:
                if ch % cfg.num_head_channels:
                    raise ValueError(f"{ch} channels not divisible by {cfg.num_head_channels}")
                num_heads = ch // cfg.num_head_channels
            return AttentionBlock(ch, num_heads, cfg.attention_order)

        self.time_embed = nn.Sequential(
            nn.Linear(mc, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim)
        )
        if cfg.num_classes is not None:
            self.label_emb = nn.Embedding(cfg.num_classes, emb_dim)

        in_ch = cfg.in_channels * (2 if cfg.super_resolution else 1)
        ch = int(cfg.channel_mult[0] * mc)
        self.input_blocks = nn.ModuleList([_EmbedSequential(nn.Conv2d(in_ch, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(cfg.channel_mult):
            for _ in range(cfg.num_res_blocks):
                layers: list[nn.Module] = [res(ch, int(mult * mc))]
                ch = int(mult * mc)
                if ds in cfg.attention_resolutions:
                    layers.append(attn(ch, cfg.num_heads))
                self.input_blocks.append(_EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(cfg.channel_mult) - 1:
                down = res(ch, ch, "down") if cfg.resblock_updown else Downsample(ch)
                self.input_blocks.append(_EmbedSequential(down))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = _EmbedSequential(res(ch, ch), attn(ch, cfg.num_heads), res(ch, ch))

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(cfg.channel_mult))):
            for i in range(cfg.num_res_blocks + 1):
                layers = [res(ch + skip_chans.pop(), int(mult * mc))]
                ch = int(mult * mc)
                if ds in cfg.attention_resolutions:
                    layers.append(attn(ch, heads_up))
                if level and i == cfg.num_res_blocks:
                    layers.append(res(ch, ch, "up") if cfg.resblock_updown else Upsample(ch))
                    ds //= 2
                self.output_blocks.append(_EmbedSequential(*layers))

        self.out = nn.Sequential(
            _norm(ch), nn.SiLU(), nn.Conv2d(ch, cfg.out_channels, 3, padding=1)
        )
        nn.init.zeros_(self.out[2].weight)
        nn.init.zeros_(self.out[2].bias)

    def _check_inputs(self, x: Tensor, y: Tensor | None, low_res: Tensor | None) -> None:
        cfg = self.config
        if cfg.num_classes is None:
            if y is not None:
                raise ValueError(
                    "y was given but this ADM model is unconditional (num_classes=None)"
                )
        else:
            if y is None:
                raise ValueError(
                    f"this ADM model is class-conditional: pass y (0..{cfg.num_classes - 1})"
                )
            if y.dtype.is_floating_point or y.shape != (x.shape[0],):
                got = f"{y.dtype} {tuple(y.shape)}"
                raise ValueError(f"y must be integer class ids of shape ({x.shape[0]},), not {got}")
            # Checked on CPU tensors only: reading a device tensor back would stall every step;
            # not while torch.compile traces (the value read would break its graph).
            if y.device.type == "cpu" and y.numel() and not torch.compiler.is_compiling():
                if int(y.min()) < 0 or int(y.max()) >= cfg.num_classes:
                    raise ValueError(f"class ids must lie in 0..{cfg.num_classes - 1}")
        if cfg.super_resolution and low_res is None:
            raise ValueError("this ADM super-resolution model needs low_res")
        if not cfg.super_resolution and low_res is not None:
            raise ValueError("low_res was given but this ADM model is not a super-resolution model")

    def forward(
        self,
        x: Tensor,
        timesteps: Tensor,
        y: Tensor | None = None,
        low_res: Tensor | None = None,
    ) -> Tensor:
        """Predict (N, out_channels, H, W) from x_t (N, C, H, W) and timesteps (N,)."""
        self._check_inputs(x, y, low_res)
        if low_res is not None:
            up = F.interpolate(low_res, x.shape[-2:], mode="bilinear", align_corners=False)
            x = torch.cat([x, up], dim=1)
        if timesteps.ndim == 0:
            timesteps = timesteps.expand(x.shape[0])
        # Follows the weights' dtype so a model cast with .half() still runs.
        t_emb = timestep_embedding(timesteps, self.config.model_channels)
        emb = self.time_embed(t_emb.to(self.time_embed[0].weight.dtype))
        if y is not None:
            emb = emb + self.label_emb(y)
        skips = []
        h = x
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)
