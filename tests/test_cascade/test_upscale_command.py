"""`cascade upscale`: files, folders and globs into one folder as `<stem>_x<scale>.<ext>`, existing
outputs skipped, bad inputs reported and counted in the exit status, `--tile` within the seam
tolerance of the default; and `cascade sample --upscale` pointing folders at it."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

from cascade.checkpoints import load, save_model
from cascade.cli import main
from cascade.formats import read_parameters
from cascade.metrics import psnr
from cascade.upscale_command import find_inputs
from cascade.upscale_files import write_atomically

TINY = ["--weights=sr256=preset:sr256-tiny", "--steps", "1", "--fidelity", "1"]  # one call


def _image(path, height: int = 16, width: int = 16, seed: int = 0):
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _upscale(*arguments: str) -> int:
    """The exit status of `cascade upscale ARGUMENTS` run in-process."""
    try:
        main(["upscale", *arguments])
    except SystemExit as exit:
        return int(exit.code)
    return 0


def test_inputs_are_files_folders_and_globs_each_once_in_order(tmp_path) -> None:
    folder = tmp_path / "photos"
    for name in ("b.jpg", "a.PNG", "sub/c.webp", ".hidden.png"):
        _image(folder / name)
    (folder / "notes.txt").write_text("not an image")
    named = _image(tmp_path / "z.png")
    found = find_inputs([str(named), str(folder), str(folder / "*.jpg"), str(named)])
    assert found == [named, folder / "a.PNG", folder / "b.jpg"]  # notes.txt, sub/, .hidden left
    deep = find_inputs([str(folder)], recursive=True)
    assert deep == [folder / "a.PNG", folder / "b.jpg", folder / "sub" / "c.webp"]
    assert find_inputs([str(tmp_path / "**" / "*.webp")], recursive=True) == [deep[-1]]
    with pytest.raises(ValueError, match="no file matches this pattern"):
        find_inputs([str(tmp_path / "*.tif")])
    with pytest.raises(ValueError, match="no such file or folder"):
        find_inputs([str(tmp_path / "missing.png")])
    _image(tmp_path / "nested" / "deeper" / "d.png")
    with pytest.raises(ValueError, match="--recursive also looks in its subfolders"):
        find_inputs([str(tmp_path / "nested")])


def test_a_batch_writes_stem_x_scale_under_one_bar_and_skips_what_exists(tmp_path, capsys):
    folder, out = tmp_path / "in", tmp_path / "out"
    _image(folder / "a.png", 16, 20)
    _image(folder / "b.jpg", 12, 16, seed=1)
    status = _upscale(str(folder), str(folder / "*.png"), "--out", str(out), "--seed", "5", *TINY)
    captured = capsys.readouterr()
    assert status == 0
    assert sorted(path.name for path in out.iterdir()) == ["a_x4.png", "b_x4.png"]
    assert captured.out.split() == [str(out / "a_x4.png"), str(out / "b_x4.png")]
    assert "2.0/2 images" in captured.err  # one bar over the batch, counting images
    assert "2 written, 0 skipped, 0 failed of 2 inputs" in captured.err
    with Image.open(out / "a_x4.png") as image:
        assert image.size == (80, 64)
        parameters = read_parameters(image)
    assert parameters["filename"] == "a.png" and parameters["seed"] == 5
    assert parameters["kind"] == "upscale" and parameters["scale"] == 4
    before = (out / "a_x4.png").read_bytes()

    assert _upscale(str(folder), "--out", str(out), "--seed", "6", *TINY) == 0
    error = capsys.readouterr().err
    assert f"{out / 'a_x4.png'} exists (--overwrite replaces it)" in error
    assert "0 written, 2 skipped" in error and (out / "a_x4.png").read_bytes() == before

    assert (
        _upscale(str(folder / "a.png"), "--out", str(out), "--seed", "6", "--overwrite", *TINY) == 0
    )
    with Image.open(out / "a_x4.png") as image:
        assert read_parameters(image)["seed"] == 6
    assert (out / "b_x4.png").exists() and len(list(out.iterdir())) == 2  # no temporary left


def test_bad_inputs_are_reported_and_counted_while_the_others_are_written(tmp_path, capsys):
    good = _image(tmp_path / "good.png")
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    tiny = _image(tmp_path / "tiny.png", 4, 4)
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(_image(tmp_path / "whole.png", 20, 20).read_bytes()[:400])
    large = _image(tmp_path / "large.png", 30, 30)  # 120 x 120 = 14400 output pixels
    inputs = [str(path) for path in (garbage, good, notes, tiny, large, truncated)]
    out = tmp_path / "out"
    status = _upscale(*inputs, "--out", str(out), "--max-output-pixels", "10000", *TINY)
    error = capsys.readouterr().err
    assert status == 5
    assert [path.name for path in out.iterdir()] == ["good_x4.png"]
    assert f"failed {garbage}: not an image" in error and f"failed {notes}: not an image" in error
    assert f"failed {tiny}: 4x4 is too small: an input needs at least 8 pixels" in error
    assert f"failed {large}: a 4x upscale of 30x30 would be 120x120 = 14400 pixels" in error
    assert f"failed {truncated}: cannot decode it: image file is truncated" in error
    assert "1 written, 0 skipped, 5 failed of 6 inputs" in error
    assert "Traceback" not in error


def test_the_exit_status_counts_failures_up_to_100(tmp_path, capsys) -> None:
    for index in range(101):
        (tmp_path / f"{index:03d}.png").write_bytes(b"garbage")
    assert _upscale(str(tmp_path), "--out", str(tmp_path / "out"), *TINY) == 100
    assert "0 written, 0 skipped, 101 failed of 101 inputs" in capsys.readouterr().err


def test_webp_results_and_an_alpha_refused_as_jpeg(tmp_path, capsys) -> None:
    source = _image(tmp_path / "in" / "a.png")
    rgba = np.random.default_rng(2).integers(0, 256, (16, 16, 4), dtype=np.uint8)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "in" / "b.png")
    out = tmp_path / "out"
    arguments = ["--out", str(out), "--format", "webp", "--quality", "80", *TINY]
    assert _upscale(str(source.parent), *arguments) == 0
    with Image.open(out / "b_x4.webp") as image:
        assert image.format == "WEBP" and image.mode == "RGBA" and image.size == (64, 64)
        assert read_parameters(image)["filename"] == "b.png"
    assert (
        _upscale(str(source.parent), "--out", str(tmp_path / "jpeg"), "--format", "jpeg", *TINY)
        == 1
    )
    error = capsys.readouterr().err
    assert "alpha channel, which jpeg cannot hold: ask for png or webp" in error
    assert [path.name for path in (tmp_path / "jpeg").iterdir()] == ["a_x4.jpg"]


@pytest.fixture(scope="module")
def sr128(tmp_path_factory) -> str:
    """The tiny sr256 network with a native size of 128: small inputs run in tiles by default."""
    model = load("preset:sr256-tiny")
    spec = dataclasses.replace(model.spec, image_size=128)
    path = tmp_path_factory.mktemp("weights") / "sr128.safetensors"
    return str(save_model(path, spec, model.network.state_dict()))


def _pixels(path) -> torch.Tensor:
    with Image.open(path) as image:
        return torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float() / 127.5 - 1


def test_tile_sets_the_window_within_the_seam_tolerance_of_the_default(tmp_path, sr128):
    """A 136 x 72 upscale in the native two 128 px windows against six 64 px ones (fidelity 1,
    one network call per window): 46.8 dB for this tiny random network; test_tiling.py holds
    tiled runs to 38 dB of one window."""
    photo = Image.fromarray(skimage.data.astronaut()).resize((34, 18), Image.LANCZOS)
    photo.save(tmp_path / "photo.png")
    common = [
        str(tmp_path / "photo.png"),
        "--seed",
        "3",
        "--steps",
        "1",
        "--fidelity",
        "1",
        f"--weights=sr256={sr128}",
    ]
    assert _upscale(*common, "--out", str(tmp_path / "native")) == 0
    assert _upscale(*common, "--out", str(tmp_path / "tiled"), "--tile", "64") == 0
    native = _pixels(tmp_path / "native" / "photo_x4.png")
    tiled = _pixels(tmp_path / "tiled" / "photo_x4.png")
    assert native.shape == tiled.shape == (1, 3, 72, 136)
    assert not torch.equal(native, tiled)  # the windows did change
    assert psnr(tiled, native) >= 38.0
    with Image.open(tmp_path / "tiled" / "photo_x4.png") as image:
        assert read_parameters(image)["tile"] == 64


def test_tile_leaves_an_output_that_fits_one_window_the_same_sample(tmp_path, sr128):
    """A 128 px output (one native window) against four 64 px tiles at fidelity 0, where the
    result is drawn from the noise: the tiles draw the window's noise where they lie, so it is
    the same sample up to the seams, and another seed is another sample."""
    photo = Image.fromarray(skimage.data.astronaut()).resize((32, 32), Image.LANCZOS)
    photo.save(tmp_path / "photo.png")
    common = [str(tmp_path / "photo.png"), "--steps", "2", "--fidelity", "0"]
    common.append(f"--weights=sr256={sr128}")
    for name, extra in (("one", []), ("tiled", ["--tile", "64"]), ("other", [])):
        seed = ["--seed", "4" if name == "other" else "3"]
        assert _upscale(*common, *seed, *extra, "--out", str(tmp_path / name)) == 0
    one, tiled, other = (_pixels(tmp_path / n / "photo_x4.png") for n in ("one", "tiled", "other"))
    assert one.shape == tiled.shape == (1, 3, 128, 128)
    assert psnr(tiled, one) >= 38.0
    assert psnr(other, one) < psnr(tiled, one) - 6.0


def test_bad_tiles_collisions_and_no_match_are_usage_errors(tmp_path, capsys) -> None:
    source = _image(tmp_path / "a" / "x.png")
    out = ["--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as exit:
        main(["upscale", str(source), "--tile", "100", *out])
    assert exit.value.code == 2
    assert "--tile: '100': give a multiple of 64 pixels" in capsys.readouterr().err
    _image(tmp_path / "b" / "x.png")
    assert _upscale(str(source), str(tmp_path / "b"), *out, *TINY) == 2
    assert "would both be written to" in capsys.readouterr().err
    assert _upscale(str(tmp_path / "*.gif"), *out) == 2
    assert "no file matches this pattern" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_an_earlier_output_among_the_inputs_is_not_upscaled_again(tmp_path, capsys) -> None:
    folder = tmp_path / "photos"
    _image(folder / "a.png")
    _image(folder / "a_x4.png", 64, 64)  # what an earlier `--out photos` wrote
    assert _upscale(str(folder), "--out", str(folder), "--overwrite", *TINY) == 0
    assert f"skipped {folder / 'a_x4.png'}: it is the output of {folder / 'a.png'}" in (
        capsys.readouterr().err
    )
    assert sorted(path.name for path in folder.iterdir()) == ["a.png", "a_x4.png"]


def test_an_interrupted_write_leaves_no_file(tmp_path) -> None:
    target = tmp_path / "out" / "a_x4.png"

    def interrupted(path) -> None:
        path.write_bytes(b"half an image")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_atomically(target, interrupted)
    assert list((tmp_path / "out").iterdir()) == []
    write_atomically(target, lambda path: path.write_bytes(b"whole"))
    assert target.read_bytes() == b"whole" and len(list(target.parent.iterdir())) == 1


def test_sample_upscale_points_folders_and_several_files_at_cascade_upscale(tmp_path, capsys):
    folder = tmp_path / "photos"
    first, second = _image(folder / "a.png"), _image(folder / "b.png")
    for upscale in ([str(folder)], [str(first), str(second)], [str(folder / "*.png")]):
        with pytest.raises(SystemExit) as exit:
            main(["sample", "--upscale", *upscale, *TINY])
        assert exit.value.code == 2
        error = capsys.readouterr().err
        assert "--upscale takes one image" in error and "`cascade upscale " in error
        assert "Traceback" not in error


def test_a_batch_image_is_the_image_sample_upscale_makes_of_it(tmp_path) -> None:
    source = _image(tmp_path / "a.png", 16, 20)
    assert _upscale(str(source), "--out", str(tmp_path / "batch"), "--seed", "9", *TINY) == 0
    main(["sample", "--upscale", str(source), "--out", str(tmp_path / "one"), "--seed", "9", *TINY])
    batch = np.array(Image.open(tmp_path / "batch" / "a_x4.png"))
    one = np.array(Image.open(tmp_path / "one" / "seed9_sr256.png"))
    assert batch.shape == (64, 80, 3) and np.array_equal(batch, one)
