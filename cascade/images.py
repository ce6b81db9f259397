"""Conversions between tensors in [-1, 1] and image files or bytes (PNG, safetensors)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor


def image_to_tensor(image: Image.Image) -> Tensor:
    """A PIL image as [1, 3, H, W] float32 in [-1, 1] (alpha dropped, grey expanded)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) / 127.5 - 1.0


def load_image(source: str | Path | bytes) -> Tensor:
    """Read an image file or encoded bytes into [1, 3, H, W] in [-1, 1]."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(handle) as image:
        return image_to_tensor(image)


def tensor_to_image(x: Tensor) -> Image.Image:
    """One image ([3, H, W] or [1, 3, H, W], [-1, 1]) as 8-bit RGB, rounded like SR3's output."""
    if x.ndim == 4:
        x = x[0]
    array = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return Image.fromarray(array.permute(1, 2, 0).numpy(), mode="RGB")


def to_png(x: Tensor) -> bytes:
    """PNG bytes of one image tensor."""
    buffer = io.BytesIO()
    tensor_to_image(x).save(buffer, format="PNG")
    return buffer.getvalue()


def save_png(x: Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_png(x))
    return path


def tensor_to_bytes(x: Tensor) -> bytes:
    """A float tensor as safetensors bytes (how stages hand their outputs to each other)."""
    return save_tensors({"image": x.detach().float().cpu().contiguous()})


def bytes_to_tensor(data: bytes) -> Tensor:
    return load_tensors(data)["image"]
