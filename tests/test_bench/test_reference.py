"""The benchmark's reference-equivalent forward computes what ours does: the reference code's
einsum attention and our SDPA attention agree on the same weights, in every head layout."""

from __future__ import annotations

import pytest
import torch

from bench.reference import reference_forward
from cascade.adm import AttentionBlock
from cascade.sr3 import SelfAttention


def _randomised(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for parameter in module.parameters():  # proj_out starts at zero: attention would not show
        torch.nn.init.normal_(parameter, std=0.2)
    return module.eval()


@pytest.mark.parametrize("order", ["new", "legacy"])
def test_adm_reference_forward_matches_ours(order: str):
    block = _randomised(AttentionBlock(64, num_heads=4, order=order))  # type: ignore[arg-type]
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        ours = block(x)
        original = AttentionBlock.forward
        with reference_forward():
            assert AttentionBlock.forward is not original  # the reference's computation runs
            reference = block(x)
        assert AttentionBlock.forward is original and block(x).equal(ours)  # undone on leaving
    assert (ours - x).abs().mean() > 0.1  # the attention changed something
    torch.testing.assert_close(reference, ours, atol=2e-5, rtol=1e-5)


def test_sr3_reference_forward_matches_ours():
    block = _randomised(SelfAttention(32, groups=8))
    x = torch.randn(2, 32, 8, 12)
    with torch.no_grad():
        ours = block(x)
        original = SelfAttention.forward
        with reference_forward():
            assert SelfAttention.forward is not original
            reference = block(x)
    assert (ours - x).abs().mean() > 0.1
    torch.testing.assert_close(reference, ours, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("preset", ["base64-tiny", "sr256-tiny"])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_whole_network_reference_forward_and_gradients_match_ours(preset: str, layout):
    """Residual blocks too: our in-place activations, in-place adds and 1x1 convolutions as
    matrix products give the reference's outputs and the same parameter gradients (training
    runs the same code), in either memory layout."""
    from cascade.presets import get_preset

    spec = get_preset(preset)
    network = _randomised(spec.build()).to(memory_format=layout)
    size = 32
    torch.manual_seed(1)
    if spec.family == "sr3":
        args = (torch.randn(2, spec.network.in_channels, size, size), torch.rand(2, 1))
    else:
        args = (torch.randn(2, 3, size, size), torch.tensor([10, 900]), torch.tensor([1, 2]))
    args = tuple(a.contiguous(memory_format=layout) if a.ndim == 4 else a for a in args)

    def run() -> tuple[torch.Tensor, list[torch.Tensor]]:
        network.zero_grad()
        out = network(*args)
        out.square().mean().backward()
        return out.detach(), [p.grad.clone() for p in network.parameters()]

    ours, our_grads = run()
    with reference_forward():
        reference, reference_grads = run()
    assert ours.std() > 0.1  # random weights: a real output, not zeros
    torch.testing.assert_close(ours, reference, atol=2e-5, rtol=1e-5)
    for mine, theirs in zip(our_grads, reference_grads, strict=True):
        torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=1e-4)
