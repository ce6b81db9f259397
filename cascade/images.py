"""Conversions between tensors in [-1, 1] and image files or bytes (PNG, WebP, JPEG through
`cascade.formats`; safetensors), quantised and encoded a band of rows at a time."""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors
from torch import Tensor

from cascade.formats import Carried, Output, encode_bytes, read_image, save_bands, write_png


def image_to_tensor(image: Image.Image) -> Tensor:
    """A PIL image as [1, 3, H, W] float32 in [-1, 1] (alpha dropped, grey expanded)."""
    array = np.asarray(image.convert("RGB"), dtype=np.float32)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0) / 127.5 - 1.0


def as_float_image(x: Tensor) -> Tensor:
    """An image tensor as float32 in [-1, 1] (a uint8 one holds 0..255)."""
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    return x.float()


def load_image_uint8(source: str | Path | bytes) -> Tensor:
    """Read an image file or encoded bytes once into uint8 [1, 3, H, W] (alpha dropped, grey
    expanded): a quarter of the float image's memory, converted to float a crop at a time."""
    return load_image_carried(source)[0]


def load_image_carried(source: str | Path | bytes) -> tuple[Tensor, Carried]:
    """`load_image_uint8`, and what the output should carry of the input (`Carried`: alpha,
    greyscale, ICC profile, EXIF; `cascade.formats.read_image`)."""
    array, carried = read_image(source)
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0), carried


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


def to_uint8(x: Tensor) -> np.ndarray:
    """Images [B, 3, H, W] in [-1, 1] as uint8 [B, H, W, 3], rounded like SR3's output."""
    values = x.detach().float().cpu().clamp(-1, 1)  # the one temporary copy; the rest in place
    values = values.add_(1).mul_(127.5).round_().to(torch.uint8)
    return values.permute(0, 2, 3, 1).numpy()


PNG_BAND_ROWS = 256  # rows quantised and encoded at a time


def tensor_bands(x: Tensor, rows: int = PNG_BAND_ROWS) -> Iterator[np.ndarray]:
    """One image tensor ([3, H, W] or [1, 3, H, W], [-1, 1]) as uint8 bands [rows, W, 3], top
    to bottom: no whole-image uint8 or float copy is made."""
    if x.ndim == 3:
        x = x[None]
    for row in range(0, x.shape[-2], rows):
        yield to_uint8(x[:1, :, row : row + rows])[0]


def to_png(x: Tensor) -> bytes:
    """PNG bytes of one image tensor ([3, H, W] or [1, 3, H, W], [-1, 1]), quantised and
    encoded a band of rows at a time: no whole-image uint8 or float copy is made."""
    height, width = x.shape[-2:]
    buffer = io.BytesIO()
    write_png(buffer, height, width, tensor_bands(x))
    return buffer.getvalue()


def encode_image(x: Tensor, output: Output) -> bytes:
    """One image tensor encoded as `output` says (`cascade.formats.encode`)."""
    height, width = x.shape[-2:]
    return encode_bytes(height, width, tensor_bands(x), output)


def save_png(x: Tensor, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(to_png(x))
    return path


def save_image(x: Tensor, path: str | Path, output: Output) -> Path:
    """`encode_image` into a file (its folder made), band by band for a PNG."""
    height, width = x.shape[-2:]
    return save_bands(path, height, width, tensor_bands(x), output)


def tensor_to_bytes(x: Tensor) -> bytes:
    """A float tensor as safetensors bytes (how stages hand their outputs to each other)."""
    return save_tensors({"image": x.detach().float().cpu().contiguous()})


def bytes_to_tensor(data: bytes) -> Tensor:
    return load_tensors(data)["image"]


def save_png_bands(path: str | Path, height: int, width: int, bands: Iterable[np.ndarray]) -> Path:
    """`write_png` of 8-bit RGB bands into a file (its folder made)."""
    return save_bands(path, height, width, bands, Output())
