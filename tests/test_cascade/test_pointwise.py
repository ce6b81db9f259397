"""1x1 convolutions as matrix products: the convolution's numbers, its output layout."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from cascade.pointwise import linear_1x1, pointwise_conv


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_pointwise_conv_equals_the_convolution(layout: torch.memory_format):
    torch.manual_seed(0)
    conv = nn.Conv2d(12, 20, 1)
    x = torch.randn(2, 12, 9, 7).contiguous(memory_format=layout)
    with torch.no_grad():
        expected = conv(x)
        got = pointwise_conv(conv, x)
    assert got.shape == (2, 20, 9, 7)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=1e-5)
    # A channels-last input gives a channels-last output, as the convolution does.
    assert got.is_contiguous(memory_format=layout)


def test_pointwise_conv_passes_identity_through():
    x = torch.randn(1, 4, 3, 3).contiguous(memory_format=torch.channels_last)
    assert pointwise_conv(nn.Identity(), x) is x


def test_linear_1x1_on_tokens_equals_conv1d():
    torch.manual_seed(0)
    conv = nn.Conv1d(8, 24, 1)
    x = torch.randn(2, 8, 30)  # (B, C, L)
    with torch.no_grad():
        expected = conv(x)
        got = linear_1x1(conv, x.mT)  # token-major (B, L, C) in, (B, L, C') out
    torch.testing.assert_close(got.mT, expected, atol=1e-6, rtol=1e-5)
