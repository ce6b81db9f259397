"""Pointwise (1x1) convolutions as matrix products over pixels, for both network families.

A 1x1 convolution is `W @ x` at every pixel. On a channels-last tensor the pixels are the rows
of a contiguous [pixels, C] matrix, so one `F.linear` computes it with no layout copy and gives
the convolution's numbers (the tests compare them). On the CPU at one thread and batches under
16, PyTorch sends 1x1 convolutions to its unfused kernel, which copies a channels-last input to
NCHW and back. NCHW inputs keep the convolution.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def pointwise_conv(conv: nn.Module, x: Tensor) -> Tensor:
    """`conv(x)` for a 1x1 Conv2d (or Identity); a matrix product on a channels-last 4-D `x`."""
    if not isinstance(conv, nn.Conv2d) or not x.is_contiguous(memory_format=torch.channels_last):
        return conv(x)
    y = F.linear(x.permute(0, 2, 3, 1), conv.weight.flatten(1), conv.bias)
    return y.permute(0, 3, 1, 2)  # [B, C, H, W] with channels-last strides, as the conv returns


def linear_1x1(conv: nn.Conv1d | nn.Conv2d, tokens: Tensor) -> Tensor:
    """A 1x1 Conv1d/Conv2d's weights applied to token-major [B, L, C] `tokens` -> [B, L, C']."""
    return F.linear(tokens, conv.weight.flatten(1), conv.bias)
