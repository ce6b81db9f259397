"""The benchmark's reference-equivalent forward computes what ours does: the reference code's
einsum attention and our SDPA attention agree on the same weights, in every head layout."""

from __future__ import annotations

import pytest
import torch

from bench.reference import reference_attention
from cascade.adm import AttentionBlock
from cascade.sr3 import SelfAttention


def _randomised(module: torch.nn.Module) -> torch.nn.Module:
    torch.manual_seed(0)
    for parameter in module.parameters():  # proj_out starts at zero: attention would not show
        torch.nn.init.normal_(parameter, std=0.2)
    return module.eval()


@pytest.mark.parametrize("order", ["new", "legacy"])
def test_adm_reference_attention_matches_ours(order: str):
    block = _randomised(AttentionBlock(64, num_heads=4, order=order))  # type: ignore[arg-type]
    x = torch.randn(2, 64, 8, 8)
    with torch.no_grad():
        ours = block(x)
        original = AttentionBlock.forward
        with reference_attention():
            assert AttentionBlock.forward is not original  # the reference's computation runs
            reference = block(x)
        assert AttentionBlock.forward is original and block(x).equal(ours)  # undone on leaving
    assert (ours - x).abs().mean() > 0.1  # the attention changed something
    torch.testing.assert_close(reference, ours, atol=2e-5, rtol=1e-5)


def test_sr3_reference_attention_matches_ours():
    block = _randomised(SelfAttention(32, groups=8))
    x = torch.randn(2, 32, 8, 12)
    with torch.no_grad():
        ours = block(x)
        original = SelfAttention.forward
        with reference_attention():
            assert SelfAttention.forward is not original
            reference = block(x)
    assert (ours - x).abs().mean() > 0.1
    torch.testing.assert_close(reference, ours, atol=2e-5, rtol=1e-5)
