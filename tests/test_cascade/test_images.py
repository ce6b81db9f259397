"""Image conversions: uint8 decoding, and the PNG writer that encodes bands as they come."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from cascade.formats import write_png
from cascade.images import load_image, load_image_uint8, save_png_bands, to_png


def _photo_like(height: int, width: int) -> np.ndarray:
    """Smooth gradients plus noise: every filter byte and the wrap-around of Sub are used."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack(
        [x * 255 // max(1, width - 1), y * 255 // max(1, height - 1), (x + y) % 256], -1
    )
    return ((base + rng.integers(-40, 40, base.shape)) % 256).astype(np.uint8)


@pytest.mark.parametrize("band_rows", [1, 7, 64])
def test_streamed_png_decodes_to_the_same_pixels_as_pillow_writes(tmp_path, band_rows) -> None:
    pixels = _photo_like(61, 45)
    bands = (pixels[row : row + band_rows] for row in range(0, 61, band_rows))
    path = save_png_bands(tmp_path / "out" / "streamed.png", 61, 45, bands)
    reference = io.BytesIO()
    Image.fromarray(pixels).save(reference, format="PNG")
    with Image.open(path) as streamed, Image.open(reference) as pillow:
        assert streamed.mode == "RGB" and streamed.size == (45, 61)
        assert np.array_equal(np.asarray(streamed), np.asarray(pillow))
        assert np.array_equal(np.asarray(streamed), pixels)


def test_write_png_refuses_bands_that_do_not_fit() -> None:
    with pytest.raises(ValueError, match="uint8"):
        write_png(io.BytesIO(), 4, 5, [np.zeros((4, 6, 3), np.uint8)])
    with pytest.raises(ValueError, match="3 rows for an image of 4"):
        write_png(io.BytesIO(), 4, 5, [np.zeros((3, 5, 3), np.uint8)])


def test_uint8_decoding_is_the_float_image_before_scaling() -> None:
    pixels = _photo_like(20, 30)
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert("RGBA").save(buffer, format="PNG")
    decoded = load_image_uint8(buffer.getvalue())
    assert decoded.dtype == torch.uint8 and decoded.shape == (1, 3, 20, 30)
    assert np.array_equal(decoded[0].permute(1, 2, 0).numpy(), pixels)  # alpha dropped
    torch.testing.assert_close(decoded.float() / 127.5 - 1, load_image(buffer.getvalue()))


def test_png_bytes_hold_the_tensor_rounded_like_sr3(tmp_path) -> None:
    x = torch.rand(1, 3, 300, 70, generator=torch.Generator().manual_seed(0)) * 2.2 - 1.1
    with Image.open(io.BytesIO(to_png(x))) as image:
        decoded = np.asarray(image)
    expected = ((x[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 0)
    assert decoded.shape == (300, 70, 3) and np.array_equal(decoded, expected.numpy())
