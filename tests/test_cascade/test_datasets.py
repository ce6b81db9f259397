"""Image folders for training: discovery, crops, conditions, labels, hold-out and bad data."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from PIL import Image
from synthetic import write_images

from cascade.classes import resolve_class
from cascade.datasets import (
    ImageBank,
    drop_labels,
    find_images,
    load_class_folder,
    load_image_folder,
    split_hold_out,
    sr_condition,
)
from cascade.degradations import bicubic_degrade, upsample_condition


def test_find_images_is_recursive_sorted_and_filters_suffixes(tmp_path: Path) -> None:
    write_images(tmp_path / "b", 2)
    write_images(tmp_path / "a" / "deep", 1)
    (tmp_path / "notes.txt").write_text("not an image")
    Image.new("RGB", (8, 8)).save(tmp_path / "x.JPG")
    found = find_images(tmp_path)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a/deep/img0.png",
        "b/img0.png",
        "b/img1.png",
        "x.JPG",
    ]


def test_random_crops_sizes_range_and_content(tmp_path: Path) -> None:
    write_images(tmp_path, 3)
    bank = load_image_folder(tmp_path, min_size=32)
    crops, labels = bank.random_crops(5, 32, torch.Generator().manual_seed(0))
    assert crops.shape == (5, 3, 32, 32) and crops.dtype == torch.float32
    assert labels is None
    assert crops.min() >= -1 and crops.max() <= 1
    # Every crop is an exact window of one image, possibly mirrored left-right.
    for crop in crops:
        pixels = ((crop + 1) * 127.5).round().to(torch.uint8)
        windows = [
            image[:, top : top + 32, left : left + 32]
            for image in bank.images
            for top in range(image.shape[1] - 31)
            for left in range(image.shape[2] - 31)
        ]
        assert any(torch.equal(pixels, w) or torch.equal(pixels, w.flip(-1)) for w in windows)


def test_random_crops_are_reproducible_from_the_generator(tmp_path: Path) -> None:
    write_images(tmp_path, 3)
    bank = load_image_folder(tmp_path, min_size=32)
    a, _ = bank.random_crops(4, 32, torch.Generator().manual_seed(7))
    b, _ = bank.random_crops(4, 32, torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_sr_condition_has_the_output_size_and_levels() -> None:
    hr = torch.rand(16, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    condition, level = sr_condition(hr, 4, "bicubic", 0.3, torch.Generator().manual_seed(1))
    assert condition.shape == hr.shape
    assert condition.min() >= -1 and condition.max() <= 1
    assert level.shape == (16,) and bool((level >= 0).all()) and bool((level <= 0.3).all())
    assert 0 < int((level == 0).sum()) < 16  # about half the items are clean
    # Clean items get exactly the SR3 condition: bicubic down, bicubic up.
    clean = level == 0
    expected = upsample_condition(bicubic_degrade(hr[clean], 4), (32, 32))
    torch.testing.assert_close(condition[clean], expected)


def test_sr_condition_realistic_degradation_keeps_sizes() -> None:
    hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 2 - 1
    condition, level = sr_condition(hr, 4, "realistic", 0.0, torch.Generator().manual_seed(1))
    assert condition.shape == hr.shape and bool((level == 0).all())


def test_drop_labels() -> None:
    labels = torch.arange(100)
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(drop_labels(labels, 0.0, 1000, gen), labels)
    assert bool((drop_labels(labels, 1.0, 1000, gen) == 1000).all())
    dropped = drop_labels(labels, 0.3, 1000, gen)
    assert 10 < int((dropped == 1000).sum()) < 50
    kept = dropped != 1000
    assert torch.equal(dropped[kept], labels[kept])


def test_hold_out_leaves_the_last_sorted_images(tmp_path: Path) -> None:
    paths = write_images(tmp_path, 6)
    bank = load_image_folder(tmp_path, min_size=32, hold_out=2)
    assert bank.paths == paths[:4] and bank.held_out == paths[4:]
    with pytest.raises(ValueError, match="leaves no training images"):
        split_hold_out(paths, 6)


def test_empty_and_missing_folders_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no image files in"):
        load_image_folder(tmp_path, min_size=32)
    with pytest.raises(ValueError, match="does not exist"):
        load_image_folder(tmp_path / "missing", min_size=32)


def test_corrupt_and_small_images_are_skipped_with_warnings(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    good = write_images(tmp_path, 2)
    (tmp_path / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    Image.new("RGB", (20, 40)).save(tmp_path / "small.png")
    with caplog.at_level(logging.WARNING, logger="cascade.datasets"):
        bank = load_image_folder(tmp_path, min_size=32)
    assert bank.paths == good
    messages = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert sum("corrupt.png" in m and "cannot read" in m for m in messages) == 1
    assert sum("small.png" in m and "smaller than the crop 32" in m for m in messages) == 1


def test_no_usable_image_is_a_clear_error(tmp_path: Path) -> None:
    Image.new("RGB", (20, 20)).save(tmp_path / "small.png")
    (tmp_path / "broken.jpg").write_bytes(b"nope")
    with pytest.raises(ValueError, match="no usable images.*2 image file"):
        load_image_folder(tmp_path, min_size=32)


def test_class_folder_with_imagenet_names(tmp_path: Path) -> None:
    write_images(tmp_path / "goldfish", 2, size=(80, 100))
    write_images(tmp_path / "207", 2, size=(100, 80))
    write_images(tmp_path, 1)  # loose image at the top: ignored
    bank = load_class_folder(tmp_path, size=32)
    assert bank.classes == {"goldfish": resolve_class("goldfish"), "207": 207}
    assert sorted(bank.labels or []) == [1, 1, 207, 207]
    # Shorter side resized to the crop, aspect kept.
    assert {tuple(image.shape[-2:]) for image in bank.images} == {(32, 40), (40, 32)}
    crops, labels = bank.random_crops(3, 32, torch.Generator().manual_seed(0))
    assert crops.shape == (3, 3, 32, 32) and labels is not None and labels.dtype == torch.long


def test_class_folder_unknown_names_are_numbered_in_sorted_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_images(tmp_path / "zebra_like", 1)
    write_images(tmp_path / "apples", 1)
    with caplog.at_level(logging.WARNING, logger="cascade.datasets"):
        bank = load_class_folder(tmp_path, size=32)
    assert bank.classes == {"apples": 0, "zebra_like": 1}
    assert any("sorted order" in r.getMessage() for r in caplog.records)


def test_class_folder_needs_subfolders(tmp_path: Path) -> None:
    write_images(tmp_path, 2)
    with pytest.raises(ValueError, match="one folder per class|class subfolders"):
        load_class_folder(tmp_path, size=32)


def test_center_crop(tmp_path: Path) -> None:
    write_images(tmp_path, 1, size=(40, 50))
    bank = load_image_folder(tmp_path, min_size=32)
    crop = bank.center_crop(0, 32)
    assert crop.shape == (1, 3, 32, 32)
    expected = bank.images[0][:, 4:36, 9:41].float() / 127.5 - 1
    torch.testing.assert_close(crop[0], expected)
    assert isinstance(bank, ImageBank) and len(bank) == 1
