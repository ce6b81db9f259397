"""Conversions between tensors in [-1, 1] and image files or bytes (PNG, safetensors), and a
PNG writer that encodes bands of rows as they come (`write_png`)."""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import BinaryIO

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


def as_float_image(x: Tensor) -> Tensor:
    """An image tensor as float32 in [-1, 1] (a uint8 one holds 0..255)."""
    if x.dtype == torch.uint8:
        return x.float() / 127.5 - 1.0
    return x.float()


def load_image_uint8(source: str | Path | bytes) -> Tensor:
    """Read an image file or encoded bytes once into uint8 [1, 3, H, W] (alpha dropped, grey
    expanded): a quarter of the float image's memory, converted to float a crop at a time."""
    handle = io.BytesIO(source) if isinstance(source, bytes) else source
    with Image.open(handle) as image:
        array = np.array(image.convert("RGB"))  # writable: torch shares its memory
    return torch.from_numpy(array).permute(2, 0, 1).unsqueeze(0)


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


def to_png(x: Tensor) -> bytes:
    """PNG bytes of one image tensor ([3, H, W] or [1, 3, H, W], [-1, 1]), quantised and
    encoded a band of rows at a time: no whole-image uint8 or float copy is made."""
    if x.ndim == 3:
        x = x[None]
    height, width = x.shape[-2:]
    rows = range(0, height, PNG_BAND_ROWS)
    bands = (to_uint8(x[:1, :, row : row + PNG_BAND_ROWS])[0] for row in rows)
    buffer = io.BytesIO()
    write_png(buffer, height, width, bands)
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


def _chunk(kind: bytes, data: bytes) -> bytes:
    body = kind + data
    return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))


def write_png(
    out: BinaryIO, height: int, width: int, bands: Iterable[np.ndarray], level: int = 6
) -> None:
    """Encode an 8-bit RGB PNG from bands of rows (uint8 [rows, width, 3], top to bottom) as
    they arrive, so the image never has to exist whole: each band is filtered (PNG's Sub
    filter) and fed to one zlib stream, written as an IDAT chunk."""
    out.write(b"\x89PNG\r\n\x1a\n")
    out.write(_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)))
    compressor = zlib.compressobj(level)
    rows = 0
    for band in bands:
        if band.dtype != np.uint8 or band.ndim != 3 or band.shape[1:] != (width, 3):
            raise ValueError(f"a band must be uint8 [rows, {width}, 3], got {band.shape}")
        lines = band.reshape(band.shape[0], width * 3)
        filtered = np.empty((lines.shape[0], width * 3 + 1), dtype=np.uint8)
        filtered[:, 0] = 1  # Sub: each byte minus the same channel of the pixel to its left
        filtered[:, 1:4] = lines[:, :3]
        np.subtract(lines[:, 3:], lines[:, :-3], out=filtered[:, 4:])
        if data := compressor.compress(filtered.tobytes()):
            out.write(_chunk(b"IDAT", data))
        rows += lines.shape[0]
    if rows != height:
        raise ValueError(f"the bands held {rows} rows for an image of {height}")
    out.write(_chunk(b"IDAT", compressor.flush()))
    out.write(_chunk(b"IEND", b""))


def save_png_bands(path: str | Path, height: int, width: int, bands: Iterable[np.ndarray]) -> Path:
    """`write_png` into a file (its folder made)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        write_png(out, height, width, bands)
    return path
