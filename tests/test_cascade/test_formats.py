"""Image files in and out (`cascade.formats`): formats and their parameters read back by Pillow,
alpha, greyscale, 16-bit inputs, ICC profiles and EXIF orientation."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from cascade.formats import (
    Carried,
    Output,
    check_output,
    encode_bytes,
    generation_parameters,
    read_image,
    read_parameters,
    write_png,
)
from cascade.stages import StageRun

PARAMETERS = generation_parameters(
    "upscale", 7, [("sr256", "preset sr256-tiny", StageRun("ddim", 3, fidelity=0.5))], scale=4
)


def sample_rgb(height: int, width: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 // width, y * 255 // height, (x + y) * 255 // (width + height)], -1)
    return np.clip(base + rng.integers(-8, 8, base.shape), 0, 255).astype(np.uint8)


def disc(height: int, width: int) -> np.ndarray:
    """An alpha plane of a known shape: opaque inside an ellipse, transparent outside."""
    y, x = np.mgrid[0:height, 0:width]
    inside = ((y - height / 2) / (height / 3)) ** 2 + ((x - width / 2) / (width / 3)) ** 2 < 1
    return np.where(inside, 255, 0).astype(np.uint8)


def encoded(image: Image.Image, format: str = "PNG", **options: object) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def bands(pixels: np.ndarray, rows: int) -> list[np.ndarray]:
    return [pixels[row : row + rows] for row in range(0, pixels.shape[0], rows)]


def srgb_profile() -> bytes:
    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


@pytest.mark.parametrize(
    ("format", "media_type", "pillow_format"),
    [("png", "image/png", "PNG"), ("webp", "image/webp", "WEBP"), ("jpeg", "image/jpeg", "JPEG")],
)
def test_each_format_round_trips_with_its_parameters(format, media_type, pillow_format) -> None:
    pixels = sample_rgb(40, 56)
    output = Output(format, None, Carried(), PARAMETERS)  # type: ignore[arg-type]
    data = encode_bytes(40, 56, bands(pixels, 16), output)
    assert output.media_type == media_type
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == pillow_format and image.size == (56, 40) and image.mode == "RGB"
        parameters = read_parameters(image)
        decoded = np.asarray(image).astype(int)
        if format == "png":
            assert "parameters" in image.text  # an iTXt chunk Pillow reads as text
        else:
            assert b"urn:cascade:parameters:1" in image.info["xmp"]
    assert parameters == PARAMETERS
    assert parameters["seed"] == 7 and parameters["scale"] == 4
    assert parameters["stages"][0] == {
        "name": "sr256",
        "model": "preset sr256-tiny",
        "sampler": "ddim",
        "steps": 3,
        "eta": 0.0,
        "guidance": 1.0,
        "color_fix": "none",
        "fidelity": 0.5,
    }
    error = np.abs(decoded - pixels).mean()
    assert (error == 0) if format == "png" else (0 < error < 6)  # lossy: quality 90


def test_quality_changes_lossy_files_and_is_refused_for_png() -> None:
    pixels = sample_rgb(48, 48)
    sizes = [len(encode_bytes(48, 48, [pixels], Output("jpeg", quality))) for quality in (10, 95)]
    assert sizes[0] < sizes[1] / 2
    with pytest.raises(ValueError, match="quality applies to webp and jpeg only"):
        check_output("png", 80)
    with pytest.raises(ValueError, match="between 1 and 100, got 0"):
        check_output("webp", 0)
    with pytest.raises(ValueError, match="png, webp, jpeg"):
        check_output("gif", None)
    with pytest.raises(ValueError, match="alpha channel, which jpeg cannot hold"):
        check_output("jpeg", None, alpha=True)


@pytest.mark.parametrize("format", ["png", "webp"])
def test_rgba_keeps_its_alpha_upscaled_by_lanczos(format: str) -> None:
    alpha = disc(24, 32)
    rgba = np.dstack([sample_rgb(24, 32), alpha])
    rgb, carried = read_image(encoded(Image.fromarray(rgba, "RGBA")))
    assert rgb.shape == (24, 32, 3) and np.array_equal(rgb, rgba[..., :3])
    assert carried.output_mode == "RGBA" and np.array_equal(carried.alpha, alpha)
    big = np.asarray(Image.fromarray(rgb).resize((128, 96), Image.Resampling.NEAREST))
    data = encode_bytes(96, 128, bands(big, 7), Output(format, None, carried))  # type: ignore[arg-type]
    expected = np.asarray(Image.fromarray(alpha).resize((128, 96), Image.Resampling.LANCZOS))
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGBA" and image.size == (128, 96)
        out = np.asarray(image.getchannel("A")).astype(int)
    if format == "png":  # lossless: each band's alpha is exactly the whole plane's resize
        assert np.array_equal(out, expected)
    else:
        assert np.abs(out - expected).max() <= 2
    assert out[48, 64] == 255 and out[2, 2] == 0  # the disc's inside and outside


def test_alpha_at_a_target_size_is_the_lanczos_resize() -> None:
    alpha = disc(30, 40)
    carried = Carried(alpha=alpha)
    pixels = np.zeros((75, 100, 3), np.uint8)  # 2.5x: not a whole factor
    with Image.open(
        io.BytesIO(encode_bytes(75, 100, bands(pixels, 16), Output("png", None, carried)))
    ) as image:
        out = np.asarray(image.getchannel("A"))
    expected = np.asarray(Image.fromarray(alpha).resize((100, 75), Image.Resampling.LANCZOS))
    assert np.array_equal(out, expected)


@pytest.mark.parametrize(("mode", "format"), [("L", "png"), ("L", "jpeg"), ("LA", "png")])
def test_greyscale_comes_back_one_channel(mode: str, format: str) -> None:
    grey = sample_rgb(20, 24)[..., 0]
    source = (
        Image.fromarray(grey)
        if mode == "L"
        else Image.fromarray(np.dstack([grey, disc(20, 24)]), "LA")
    )
    rgb, carried = read_image(encoded(source))
    assert carried.mode == "L" and carried.output_mode == mode
    assert np.array_equal(rgb[..., 0], grey) and np.array_equal(rgb[..., 1], rgb[..., 2])
    model_output = sample_rgb(20, 24, seed=3)  # a model's RGB output, channels apart by noise
    data = encode_bytes(20, 24, [model_output], Output(format, None, carried))  # type: ignore[arg-type]
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == mode
        luma = np.asarray(image.getchannel("L")).astype(int)
    reference = np.asarray(Image.fromarray(model_output).convert("L")).astype(int)
    difference = np.abs(luma - reference)  # the luma, as Pillow takes it
    if format == "png":
        assert difference.max() == 0
    else:
        assert difference.mean() < 4


def png16(pixels: np.ndarray) -> bytes:
    """A 16-bit PNG (grey [H, W] or RGB [H, W, 3]), which Pillow cannot write in colour."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    height, width = pixels.shape[:2]
    header = struct.pack(">IIBBBBB", width, height, 16, 2 if pixels.ndim == 3 else 0, 0, 0, 0)
    rows = pixels.astype(">u2").reshape(height, -1)
    raw = b"".join(b"\x00" + row.tobytes() for row in rows)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def test_sixteen_bit_inputs_are_reduced_to_eight() -> None:
    ramp = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    rgb, carried = read_image(png16(ramp))
    assert (carried.mode, carried.bits) == ("L", 16)
    assert rgb.dtype == np.uint8 and rgb[..., 0].min() == 0 and rgb[..., 0].max() == 255
    assert np.abs(rgb[..., 0].astype(int) - ramp / 257).max() <= 0.5
    assert carried.describe()["note"] == "16-bit input reduced to 8 bits per channel"
    colour = np.random.default_rng(1).integers(0, 65536, (8, 8, 3)).astype(np.uint16)
    rgb, carried = read_image(png16(colour))
    assert (carried.mode, carried.bits) == ("RGB", 16)
    assert np.array_equal(rgb, (colour >> 8).astype(np.uint8))


@pytest.mark.parametrize("format", ["png", "webp", "jpeg"])
def test_icc_profile_bytes_are_carried_exactly(format: str) -> None:
    profile = srgb_profile()
    _, carried = read_image(encoded(Image.fromarray(sample_rgb(16, 16)), icc_profile=profile))
    assert carried.icc_profile == profile
    data = encode_bytes(16, 16, [sample_rgb(16, 16)], Output(format, None, carried))  # type: ignore[arg-type]
    with Image.open(io.BytesIO(data)) as image:
        assert image.info["icc_profile"] == profile


@pytest.mark.parametrize("format", ["png", "webp", "jpeg"])
def test_exif_orientation_is_applied_once_and_reset(format: str) -> None:
    stored = np.zeros((20, 30, 3), np.uint8)
    stored[0, 0] = 255  # a white corner: orientation 6 (rotate 90° clockwise) puts it top right
    exif = Image.Exif()
    exif[0x0112], exif[0x010F] = 6, "Test camera"
    rgb, carried = read_image(encoded(Image.fromarray(stored), "JPEG", exif=exif, quality=100))
    assert rgb.shape == (30, 20, 3) and rgb[0, -1].min() > 200 and rgb[-1, 0].max() < 50
    data = encode_bytes(30, 20, [rgb], Output(format, None, carried))  # type: ignore[arg-type]
    with Image.open(io.BytesIO(data)) as image:
        written = image.getexif()
        assert written[0x0112] == 1 and written[0x010F] == "Test camera"
        upright = ImageOps.exif_transpose(image)  # a viewer turns nothing more
        assert upright.size == (20, 30)


def test_carried_side_data_survives_its_bytes() -> None:
    carried = Carried("L", disc(5, 7), srgb_profile(), b"Exif\x00\x00MM\x00*", 16)
    again = Carried.from_bytes(carried.to_bytes())
    assert (again.mode, again.bits, again.icc_profile, again.exif) == (
        "L",
        16,
        carried.icc_profile,
        carried.exif,
    )
    assert np.array_equal(again.alpha, carried.alpha)
    plain = Carried.from_bytes(Carried().to_bytes())
    assert plain.plain and plain.alpha is None


@pytest.mark.parametrize(("channels", "mode"), [(1, "L"), (2, "LA"), (4, "RGBA")])
def test_streamed_png_of_every_channel_count(channels: int, mode: str) -> None:
    pixels = np.random.default_rng(4).integers(0, 256, (33, 17, channels), dtype=np.uint8)
    buffer = io.BytesIO()
    write_png(buffer, 33, 17, bands(pixels, 5))
    with Image.open(buffer) as image:
        assert image.mode == mode
        assert np.array_equal(np.asarray(image).reshape(33, 17, channels), pixels)
