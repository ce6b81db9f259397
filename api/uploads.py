"""Uploaded images: limits checked from the header before decoding, then uint8 pixels.

The first upscaling stage receives the image as a uint8 [1, 3, H, W] tensor (safetensors bytes,
like every stage-to-stage hand-off), decoded by `cascade.formats.read_image` as the CLI decodes
its inputs; what the result carries of it (alpha, greyscale, ICC, EXIF) travels beside it.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError
from safetensors.numpy import save as save_tensors

from cascade.formats import Carried, ImageModeError, read_image

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


def decode(data: bytes) -> tuple[np.ndarray, Carried]:
    """Pixels as uint8 [1, 3, H, W] (EXIF rotation applied, grey replicated to RGB, 16 bits
    reduced to 8), and what the result carries of the upload: alpha, greyscale, ICC profile and
    EXIF (`cascade.formats.read_image`)."""
    try:
        array, carried = read_image(data)
    except ImageModeError as error:
        raise UploadError(422, str(error)) from None
    except (OSError, SyntaxError, ValueError):
        raise UploadError(422, "the image data is corrupt or truncated") from None
    return array.transpose(2, 0, 1)[None], carried


def tensor_bytes(array: np.ndarray) -> bytes:
    """safetensors bytes under the key stages read ("image")."""
    return save_tensors({"image": np.ascontiguousarray(array)})
