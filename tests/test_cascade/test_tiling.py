"""Tiled upscales (`cascade.tiling`, `cascade.tiled_upscale`): tile placement, blend windows,
position-keyed noise, band assembly, and a tiled upscale against one window over the same
input (the streaming PNG writer is tested in test_images.py)."""

from __future__ import annotations

import io
import subprocess
import sys

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from cascade.checkpoints import load
from cascade.degradations import bicubic_degrade
from cascade.formats import Output
from cascade.images import load_image_carried, to_uint8
from cascade.metrics import border_gradient_ratio, psnr
from cascade.pipeline import Stage
from cascade.stages import StageRun
from cascade.tiled_upscale import tile_count, tiled_upscale, upscale_to_file
from cascade.tiling import (
    PositionNoise,
    axis_starts,
    axis_windows,
    blend_bands,
    blend_ramp,
    tile_edges,
)


def test_tile_starts_cover_the_axis_and_align_the_last_tile() -> None:
    assert axis_starts(16, 16, 4) == [0]
    assert axis_starts(8, 16, 4) == [0]  # shorter than a tile: one tile
    assert axis_starts(40, 16, 4) == [0, 12, 24]  # stride 12, the last flush with the border
    assert axis_starts(29, 16, 4) == [0, 12, 13]
    for n in (17, 29, 40, 100):
        covered = torch.zeros(n, dtype=torch.bool)
        for start in axis_starts(n, 16, 4):
            covered[start : start + 16] = True
        assert covered.all()


def test_blend_ramp_is_a_positive_raised_cosine_at_shared_edges_only() -> None:
    window = blend_ramp(8, 4, ramp_start=True, ramp_end=False)
    expected = [0.5 - 0.5 * np.cos(np.pi * (i + 0.5) / 4) for i in range(4)]
    assert torch.allclose(window[:4], torch.tensor(expected, dtype=torch.float64))
    assert (window[4:] == 1).all()
    # Two ramps meeting over exactly the ramp's length sum to 1 (a partition of unity).
    falling = blend_ramp(8, 4, ramp_start=False, ramp_end=True)
    assert torch.allclose(window[:4] + falling[4:], torch.ones(4, dtype=torch.float64))
    both = blend_ramp(8, 3, ramp_start=True, ramp_end=True)
    assert both.min() > 0 and torch.equal(both, both.flip(0))
    assert (blend_ramp(8, 3, ramp_start=False, ramp_end=False) == 1).all()


@pytest.mark.parametrize("n", [256, 300, 1000])
def test_axis_windows_sum_to_one_and_start_on_the_input_grid(n: int) -> None:
    windows = axis_windows(n, 128, 4)
    total = torch.zeros(n, dtype=torch.float64)
    for window in windows:
        assert window.start % 4 == 0 and window.length == 128
        total[window.start : window.stop] += window.weight
    assert torch.allclose(total, torch.ones(n, dtype=torch.float64))
    assert windows[-1].stop == n


def test_position_noise_agrees_where_windows_overlap_and_changes_per_draw() -> None:
    like = torch.empty(2, 3, 100, 90)
    whole = PositionNoise([5, 6], 0, 0)
    first, second = whole(like), whole(like)
    assert not torch.equal(first, second)  # each call is the next draw
    window = PositionNoise([5, 6], 37, 20)
    part = window(torch.empty(2, 3, 50, 70))
    torch.testing.assert_close(part, first[..., 37:87, 20:90], rtol=0, atol=0)
    torch.testing.assert_close(window(torch.empty(2, 3, 50, 70)), second[..., 37:87, 20:90])
    assert not torch.equal(first[0], first[1])  # items have their own seeds
    other = PositionNoise([5, 6], 0, 0, stream="augment")(like)
    assert not torch.equal(other, first)
    values = torch.cat([first.flatten(), second.flatten()])
    assert abs(values.mean().item()) < 0.02 and abs(values.std().item() - 1) < 0.02


def test_blend_bands_rebuild_an_image_from_its_tiles_one_band_at_a_time() -> None:
    height, width = 300, 200
    image = torch.rand(1, 3, height, width)
    rows, cols = axis_windows(height, 128, 4), axis_windows(width, 128, 4)
    seen: list[tuple[int, int]] = []

    def sample_tile(top: int, left: int, tile_h: int, tile_w: int) -> torch.Tensor:
        seen.append((top, left))
        return image[..., top : top + tile_h, left : left + tile_w]

    bands = list(blend_bands(rows, cols, sample_tile, batch=1, crop=(290, 190)))
    assert len(seen) == len(rows) * len(cols) and len(bands) == len(rows)
    assert all(band.shape[-2] <= 128 for band in bands)  # never more than a tile's rows
    torch.testing.assert_close(torch.cat(bands, -2), image[..., :290, :190], atol=1e-6, rtol=0)


def _photo(size: int) -> torch.Tensor:
    photo = torch.from_numpy(skimage.data.astronaut()).permute(2, 0, 1)[None].float() / 127.5 - 1
    photo = F.interpolate(photo, size=(size, size), mode="bicubic", antialias=True)
    return photo.clamp(-1, 1)


@pytest.fixture(scope="module")
def stage() -> Stage:
    return Stage("sr256", load("preset:sr256-tiny"), StageRun("dpmpp_2m", 3))


def test_tiled_upscale_agrees_with_one_window_and_shows_no_seams(stage: Stage) -> None:
    """Sixteen 128 px tiles of a 384 px upscale against one window over the same photo (the
    same position-keyed noise). They differ where the network sees a tile's edge, which the
    blend ramps fade out, and through its GroupNorms, whose statistics are a tile's rather than
    the image's: 39.3 dB for this tiny random network (fidelity 1, one network call: 39.8 dB;
    half-tile overlaps do not raise it), 42.8 dB for the demo sr256 weights, higher with the
    native 256 px tiles. Against the photo the two are within 0.1 dB."""
    target = _photo(384)
    low = bicubic_degrade(target, 4)
    assert tile_count(stage, 384, 384, tile=128) == 16
    tiled = tiled_upscale(stage, low, [3], tile=128)
    whole = tiled_upscale(stage, low, [3], tile=384)
    assert isinstance(tiled, torch.Tensor) and tiled.shape == (1, 3, 384, 384)
    assert psnr(tiled, whole) >= 38.0
    assert abs(psnr(tiled, target) - psnr(whole, target)) <= 0.1
    edges = tile_edges(axis_windows(384, 128, 4))
    assert len(edges) == 6
    ratio = border_gradient_ratio(tiled[0], edges, edges)
    assert ratio <= 1.1 and ratio <= 1.05 * border_gradient_ratio(whole[0], edges, edges)


def test_tiled_upscale_in_uint8_is_the_float_result_quantised(stage: Stage) -> None:
    low = (bicubic_degrade(_photo(256), 4)[..., :40, :56] + 1) * 127.5
    low = low.round().to(torch.uint8).repeat(2, 1, 1, 1)  # decoded uploads: 40 x 56 -> 160 x 224
    as_float = tiled_upscale(stage, low, [1, 2], tile=128)
    as_uint8 = tiled_upscale(stage, low, [1, 2], tile=128, output="uint8")
    assert isinstance(as_uint8, np.ndarray) and as_uint8.shape == (2, 160, 224, 3)
    assert np.array_equal(as_uint8, to_uint8(as_float))
    # The batch's items are independent: item 2 alone is the same image, up to the float rounding
    # of kernels that oneDNN picks per batch size (on some CPUs a level flips where a value sits
    # on a rounding boundary).
    alone = tiled_upscale(stage, low[:1], [2], tile=128, output="uint8")
    apart = np.abs(alone[0].astype(np.int16) - as_uint8[1].astype(np.int16))
    assert int(apart.max()) <= 1 and float((apart > 0).mean()) < 0.01


def test_stage_run_tiles_an_upscale_larger_than_its_network(stage: Stage) -> None:
    steps: list[tuple[int, int]] = []
    low = torch.rand(1, 3, 72, 80) * 2 - 1  # 288 x 320: 2 x 2 tiles of 256
    out = stage.run(seeds=[4], low_res=low, callback=lambda s, t, x0: steps.append((s, t)))
    assert out.shape == (1, 3, 288, 320) and out.abs().max() <= 1
    total = steps[-1][1]
    assert steps[-1][0] == total and total % 4 == 0  # steps counted over all four tiles
    assert [step for step, _ in steps] == sorted(step for step, _ in steps)
    torch.testing.assert_close(out, tiled_upscale(stage, low, [4]))


def test_border_gradient_ratio_finds_a_seam() -> None:
    image = _photo(256)[0]
    edges = [64, 128, 192]
    assert 0.8 < border_gradient_ratio(image, edges, edges) < 1.2
    seamed = image.clone()
    seamed[:, :, 128:] += 0.1  # a step in brightness at column 128
    assert border_gradient_ratio(seamed, [], [128]) > 1.5  # the mean |gradient| is ~0.17


PEAK = """
import dataclasses, json, resource, sys
import torch
from cascade.checkpoints import load
from cascade.pipeline import Stage
from cascade.stages import StageRun
from cascade.tiled_upscale import upscale_to_png
torch.set_num_threads(1)
side = int(sys.argv[1])
stage = Stage("sr256", load("preset:sr256-tiny"), StageRun("dpmpp_2m", 1))
low = torch.randint(0, 256, (1, 3, side // 4, side // 4), dtype=torch.uint8)
upscale_to_png(stage, low, 0, sys.argv[2])
print(json.dumps(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024))
"""


def _peak_mb(sides: tuple[int, ...], folder) -> list[float]:
    """Each side's upscale in a fresh process of its own, run side by side: each reports its
    own peak RSS."""
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", PEAK, str(side), str(folder / f"{side}.png")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for side in sides
    ]
    peaks = []
    for process in processes:
        out, err = process.communicate()
        assert process.returncode == 0, err
        peaks.append(float(out.strip().splitlines()[-1]))
    return peaks


def test_peak_memory_grows_by_less_than_one_float_copy_of_the_output(tmp_path) -> None:
    """Peak RSS of fresh processes: 256 px (one window) against 2048 px (100 tiles, 64 times
    the pixels). The larger run keeps one band of rows and writes its PNG band by band, so it
    must stay below one float32 copy of its own output (48 MiB) above the smaller one; the
    per-step blending over the whole image it replaces held several."""
    small, large = _peak_mb((256, 2048), tmp_path)
    with Image.open(tmp_path / "2048.png") as image:
        assert image.size == (2048, 2048)
    one_float_copy = 2048 * 2048 * 3 * 4 / 2**20
    assert large - small < one_float_copy, (small, large)


def test_tiled_upscale_to_a_file_carries_alpha_band_by_band(tmp_path) -> None:
    """The CLI's streamed path: an RGBA input upscaled in tiles, written band by band, comes
    back RGBA with its alpha exactly the LANCZOS resize of the input's (and its parameters)."""
    y, x = np.mgrid[0:80, 0:72]
    alpha = np.where((y - 40) ** 2 + (x - 36) ** 2 < 30**2, 255, 0).astype(np.uint8)
    rgba = np.dstack([np.full((80, 72, 3), 128, np.uint8), alpha])
    buffer = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buffer, format="PNG")
    low, carried = load_image_carried(buffer.getvalue())
    stage = Stage("sr256", load("preset:sr256-tiny"), StageRun("dpmpp_2m", 1))
    assert stage.tiled(320, 288)
    output = Output("png", None, carried, {"seed": 0})
    path = upscale_to_file(stage, low, 0, tmp_path / "out.png", output)
    expected = np.asarray(Image.fromarray(alpha).resize((288, 320), Image.Resampling.LANCZOS))
    with Image.open(path) as image:
        assert image.mode == "RGBA" and image.size == (288, 320)
        assert np.array_equal(np.asarray(image.getchannel("A")), expected)
        assert image.text["parameters"] == '{"seed": 0}'
