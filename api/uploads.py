"""Uploaded images: limits checked from the header before decoding, then a float tensor.

The first upscaling stage receives the image as a float32 [1, 3, H, W] tensor in [-1, 1]
(safetensors bytes, like every stage-to-stage hand-off), converted here exactly as
`cascade.images.image_to_tensor` does, with numpy instead of torch.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from safetensors.numpy import save as save_tensors

SIXTEEN_BIT_GREY = frozenset({"I;16", "I;16B", "I;16L", "I"})  # PNG's 16-bit greyscale
FORMATS = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp"}


class UploadError(ValueError):
    """An upload the service refuses, with the HTTP status that says why."""

    def __init__(self, status_code: int, message: str):
        super().__init__(message)
        self.status_code = status_code


@dataclass(frozen=True)
class ImageHeader:
    format: str
    height: int
    width: int
    frames: int = 1


def probe(data: bytes, max_pixels: int) -> ImageHeader:
    """Format and size from the header alone (PIL reads no pixel data until `load`)."""
    if not data:
        raise UploadError(422, "the uploaded file is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                header = ImageHeader(
                    image.format or "?", image.height, image.width, getattr(image, "n_frames", 1)
                )
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise UploadError(413, f"image refused as a decompression bomb: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise UploadError(422, "the uploaded file is not an image (PNG, JPEG or WebP)") from None
    if header.format not in FORMATS:
        raise UploadError(
            415, f"image format {header.format} is not accepted: send PNG, JPEG or WebP"
        )
    if header.frames > 1:
        raise UploadError(
            422,
            f"the image is animated ({header.frames} frames); send a still PNG, JPEG or WebP",
        )
    pixels = header.height * header.width
    if pixels > max_pixels:
        raise UploadError(
            413,
            f"image is {header.width}x{header.height} = {pixels} pixels; "
            f"the limit is {max_pixels} pixels",
        )
    return header


def decode(data: bytes) -> np.ndarray:
    """Pixels as float32 [1, 3, H, W] in [-1, 1] (EXIF rotation applied, alpha dropped).

    16-bit greyscale PNGs open as integer modes that PIL's RGB conversion would clip at 255;
    they are scaled from their full range instead (16-bit colour PNGs PIL already reduces to
    8 bits per channel correctly)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image = ImageOps.exif_transpose(image)
            if image.mode in SIXTEEN_BIT_GREY:
                grey = np.clip(np.asarray(image, dtype=np.float32) / 65535.0, 0.0, 1.0)
                grey = np.repeat(grey[..., None], 3, axis=-1) * 2.0 - 1.0
                return grey.transpose(2, 0, 1)[None].astype(np.float32)
            elif image.mode in ("RGB", "RGBA", "RGBX", "L", "LA", "P", "PA", "1", "CMYK", "YCbCr"):
                array = np.asarray(image.convert("RGB"), dtype=np.uint8)
            else:
                raise UploadError(
                    422,
                    f"images in PIL mode {image.mode} are not accepted: send 8- or "
                    "16-bit RGB or greyscale",
                )
    except (OSError, SyntaxError, ValueError) as error:
        if isinstance(error, UploadError):
            raise
        raise UploadError(422, "the image data is corrupt or truncated") from None
    return array.transpose(2, 0, 1)[None]


def tensor_bytes(array: np.ndarray) -> bytes:
    """safetensors bytes under the key stages read ("image")."""
    return save_tensors({"image": np.ascontiguousarray(array)})
