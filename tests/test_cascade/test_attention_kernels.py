"""Both families' attention blocks hand SDPA inputs its fused kernels accept.

How the kernel check works. `torch.nn.attention.sdpa_kernel([SDPBackend.FLASH_ATTENTION])`
restricts SDPA to the flash backend (on CPU the only fused kernel: the CPU build has no
efficient/cuDNN backend), so SDPA raises `RuntimeError: No available kernel` when that kernel
cannot take the inputs instead of silently falling back to the math kernel. On torch 2.13 CPU
this does discriminate on layout: with the old transposed q/k/v (`q.mT`, stride(-1) == tokens)
it raised, after warning "All fused kernels require the last dimension of the input to have
stride 1". `torch.backends.cuda.can_use_flash_attention` needs CUDA `SDPAParams` and says nothing
about CPU, so the test also asks `torch._fused_sdp_choice(q, k, v)` (private; what SDPA itself
calls to pick a backend, on CPU too) and requires it to pick a fused backend. On CUDA the same
checks pick flash/efficient/cuDNN, whichever the device supports.

q, k and v are the exact tensors the block passes to SDPA, captured by wrapping
`torch.nn.functional.scaled_dot_product_attention`; they must be contiguous
(B, heads, tokens, head_dim) tensors, the layout every fused kernel accepts.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from cascade.adm import ADMUNet, AttentionBlock
from cascade.presets import get_preset
from cascade.sr3 import SelfAttention

MATH = SDPBackend.MATH
FUSED = SDPBackend.FLASH_ATTENTION  # the CPU fused kernel; on CUDA any fused backend would do
FUSED_CHOICES = {
    b.value
    for b in (
        SDPBackend.FLASH_ATTENTION,
        SDPBackend.EFFICIENT_ATTENTION,
        SDPBackend.CUDNN_ATTENTION,
    )
}


def _adm_blocks(order: str) -> list[nn.Module]:
    spec = get_preset("base64-tiny")
    model = ADMUNet(dataclasses.replace(spec.network, attention_order=order))
    return [m for m in model.modules() if isinstance(m, AttentionBlock)]


def _sr3_blocks() -> list[nn.Module]:
    model = get_preset("sr256-tiny").build()
    return [m for m in model.modules() if isinstance(m, SelfAttention)]


# (name, block factory, input shape): ADM at 8x8 (64 tokens, 32-channel heads), SR3 at 16x16.
CASES: list[tuple[str, Callable[[], list[nn.Module]], tuple[int, ...]]] = [
    ("adm-new", lambda: _adm_blocks("new"), (2, 64, 8, 8)),
    ("adm-legacy", lambda: _adm_blocks("legacy"), (2, 64, 8, 8)),
    ("sr3", _sr3_blocks, (2, 16, 16, 16)),
]


def _block(factory: Callable[[], list[nn.Module]], channels: int) -> nn.Module:
    blocks = factory()
    assert blocks, "the preset has no attention block"
    block = next((b for b in blocks if b.qkv.in_channels == channels), blocks[0])
    # Random weights: ADM zero-initialises proj_out, which would hide the attention output.
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in block.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.2)
    return block.eval()


def _captured_qkv(
    block: nn.Module, x: Tensor, monkeypatch: pytest.MonkeyPatch
) -> list[tuple[Tensor, ...]]:
    calls: list[tuple[Tensor, ...]] = []
    sdpa = F.scaled_dot_product_attention

    def spy(q: Tensor, k: Tensor, v: Tensor, *args: object, **kwargs: object) -> Tensor:
        calls.append((q, k, v))
        return sdpa(q, k, v, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(F, "scaled_dot_product_attention", spy)
        block(x)
    return calls


@pytest.mark.parametrize("name,factory,shape", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
@torch.no_grad()
def test_fused_kernel_accepts_block_qkv(
    name: str,
    factory: Callable[[], list[nn.Module]],
    shape: tuple[int, ...],
    memory_format: torch.memory_format,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    block = _block(factory, shape[1])
    x = torch.randn(shape).contiguous(memory_format=memory_format)
    b, _, h, w = shape

    calls = _captured_qkv(block, x, monkeypatch)
    assert len(calls) == 1
    q, k, v = calls[0]
    for t in (q, k, v):
        assert t.dim() == 4 and t.shape[0] == b and t.shape[2] == h * w, t.shape
        assert t.is_contiguous(), f"{name}: SDPA got strides {t.stride()} for shape {t.shape}"
    assert torch._fused_sdp_choice(q, k, v) in FUSED_CHOICES

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # SDPA warns why a fused kernel was not used
        with sdpa_kernel([FUSED]):  # raises RuntimeError if the fused kernel cannot run
            fused = block(x)
    with sdpa_kernel([MATH]):
        math = block(x)
    torch.testing.assert_close(fused, math, atol=1e-5, rtol=1e-5)


def test_math_only_check_rejects_transposed_layout() -> None:
    """The kernel check discriminates: the old layout (q.mT views) cannot use the fused kernel."""
    q, k, v = torch.randn(3, 2, 4, 32, 64).unbind(0)  # (B, heads, head_dim, tokens)
    q, k, v = q.mT, k.mT, v.mT
    assert torch._fused_sdp_choice(q, k, v) == MATH.value
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(RuntimeError), sdpa_kernel([FUSED]):
            F.scaled_dot_product_attention(q, k, v)
