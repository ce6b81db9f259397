"""Training and evaluation images: folders decoded once into memory, random crops with flips,
and the random inputs made from them (degraded, noise-augmented conditions; dropped labels).

The demo data sets are small, so every image is decoded once into a uint8 tensor and batches are
cropped on the fly in the training process itself (no DataLoader workers on a 2-core machine).
Unreadable files and images smaller than the crop are skipped with one warning each; a folder
with nothing usable is a ValueError that says what was found.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from cascade.classes import resolve_class
from cascade.degradations import DEGRADATIONS, noise_augment, upsample_condition

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"})


def find_images(folder: str | Path) -> list[Path]:
    """Image files under `folder` (recursive, by suffix), sorted by path."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"data folder {root} does not exist or is not a folder")
    return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def split_hold_out(paths: Sequence[Path], hold_out: int) -> tuple[list[Path], list[Path]]:
    """(kept, held out): the last `hold_out` paths (in sorted order) are held out."""
    if hold_out < 0:
        raise ValueError(f"hold-out must be >= 0, got {hold_out}")
    if hold_out and hold_out >= len(paths):
        raise ValueError(
            f"hold-out {hold_out} leaves no training images: the folder has {len(paths)}"
        )
    cut = len(paths) - hold_out
    return list(paths[:cut]), list(paths[cut:])


def read_image(path: Path, shorter_side: int | None = None) -> Tensor | None:
    """An image file as uint8 [3, H, W], optionally resized so its shorter side is
    `shorter_side` (PIL bicubic, antialiased); None with a warning when it cannot be decoded."""
    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if shorter_side is not None and min(image.size) > shorter_side:
                ratio = shorter_side / min(image.size)
                size = tuple(max(shorter_side, round(side * ratio)) for side in image.size)
                image = image.resize(size, Image.Resampling.BICUBIC)
            array = np.asarray(image, dtype=np.uint8).copy()
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as error:
        # PIL reports truncated and unidentified files as OSError, some corrupt headers as
        # ValueError or SyntaxError: all of them mean "not usable", none should stop training.
        log.warning("skipping %s: cannot read it as an image (%s)", path, error)
        return None
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def to_float(images: Tensor) -> Tensor:
    """uint8 images to float32 in [-1, 1] (the project's convention)."""
    return images.float() / 127.5 - 1.0


@dataclass
class ImageBank:
    """Decoded images (uint8 [3, H, W], any sizes), their paths and optional class labels."""

    images: list[Tensor]
    paths: list[Path]
    labels: list[int] | None = None
    classes: dict[str, int] = field(default_factory=dict)  # folder name -> class id (base)
    held_out: list[Path] = field(default_factory=list)  # left out for evaluation (--hold-out)

    def __len__(self) -> int:
        return len(self.images)

    @property
    def names(self) -> list[str]:
        return [str(path) for path in self.paths]

    def random_crops(
        self, batch: int, size: int, generator: torch.Generator
    ) -> tuple[Tensor, Tensor | None]:
        """A batch of random `size` crops with random horizontal flips, float in [-1, 1], and
        their labels; images are drawn uniformly with replacement."""
        indices = torch.randint(len(self.images), (batch,), generator=generator).tolist()
        crops = []
        for index in indices:
            image = self.images[index]
            height, width = image.shape[-2:]
            top = int(torch.randint(height - size + 1, (), generator=generator))
            left = int(torch.randint(width - size + 1, (), generator=generator))
            crop = image[:, top : top + size, left : left + size]
            # Horizontal only: natural images are not up-down symmetric.
            if bool(torch.rand((), generator=generator) < 0.5):
                crop = crop.flip(-1)
            crops.append(crop)
        labels = None
        if self.labels is not None:
            labels = torch.tensor([self.labels[i] for i in indices], dtype=torch.long)
        return to_float(torch.stack(crops)), labels

    def center_crop(self, index: int, size: int) -> Tensor:
        """The central `size` x `size` crop of one image, float [1, 3, size, size] in [-1, 1]."""
        return to_float(center_crop(self.images[index], size))[None]


def center_crop(image: Tensor, size: int) -> Tensor:
    """The central `size` x `size` window of a [..., H, W] tensor."""
    height, width = image.shape[-2:]
    if min(height, width) < size:
        raise ValueError(f"image {height}x{width} is smaller than the crop {size}")
    top, left = (height - size) // 2, (width - size) // 2
    return image[..., top : top + size, left : left + size]


def _load(paths: Sequence[Path], min_size: int, shorter_side: int | None) -> list[Tensor | None]:
    """Decode each path; None (with one warning) for unreadable or too-small images."""
    images: list[Tensor | None] = []
    for path in paths:
        image = read_image(path, shorter_side)
        if image is not None and min(image.shape[-2:]) < min_size:
            height, width = image.shape[-2:]
            # Skipped rather than upscaled: an upscaled image would teach blur as "ground truth".
            log.warning(
                "skipping %s: %dx%d is smaller than the crop %d", path, width, height, min_size
            )
            image = None
        images.append(image)
    return images


def _no_usable(folder: Path, found: int, min_size: int) -> ValueError:
    return ValueError(
        f"no usable images in {folder}: {found} image file(s) found "
        f"({', '.join(sorted(IMAGE_SUFFIXES))}), none readable and at least {min_size}x{min_size}"
    )


def load_image_folder(folder: str | Path, min_size: int, hold_out: int = 0) -> ImageBank:
    """Every image under `folder` at full size (SR training), minus the held-out last ones."""
    root = Path(folder)
    paths, held_out = split_hold_out(find_images(root), hold_out)
    if not paths:
        raise ValueError(
            f"no image files in {root} (looked recursively for {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    kept = [
        (p, image)
        for p, image in zip(paths, _load(paths, min_size, None), strict=True)
        if image is not None
    ]
    if not kept:
        raise _no_usable(root, len(paths), min_size)
    log.info("loaded %d of %d images from %s", len(kept), len(paths), root)
    return ImageBank([image for _, image in kept], [p for p, _ in kept], held_out=held_out)


def class_ids_for(names: Sequence[str]) -> dict[str, int]:
    """Class id per folder name: ImageNet names or ids when all resolve, else sorted order."""
    resolved: dict[str, int] = {}
    unknown = None
    for name in names:
        try:
            resolved[name] = resolve_class(name)
        except ValueError:
            unknown = name
            break
    if unknown is None:
        return resolved
    mapping = {name: index for index, name in enumerate(sorted(names))}
    log.warning(
        "class folder %r is not an ImageNet class name or id: numbering the %d folders in "
        "sorted order instead (%s); the mapping is stored in the checkpoint",
        unknown,
        len(names),
        describe_classes(mapping),
    )
    return mapping


def load_class_folder(folder: str | Path, size: int, hold_out: int = 0) -> ImageBank:
    """One subfolder per class (base training): images resized so the shorter side is `size`."""
    root = Path(folder)
    all_paths = find_images(root)
    subfolders = sorted({p.relative_to(root).parts[0] for p in all_paths if p.parent != root})
    if not subfolders:
        raise ValueError(
            f"no class subfolders with images in {root}: base64 training expects "
            "DATA/<class name or id>/<images>"
        )
    loose = [p for p in all_paths if p.parent == root]
    if loose:
        log.warning("ignoring %d image(s) directly in %s (not in a class folder)", len(loose), root)
    classes = class_ids_for(subfolders)
    paths, held_out = split_hold_out([p for p in all_paths if p.parent != root], hold_out)
    images, kept_paths, labels = [], [], []
    for path, image in zip(paths, _load(paths, size, shorter_side=size), strict=True):
        if image is not None:
            images.append(image)
            kept_paths.append(path)
            labels.append(classes[path.relative_to(root).parts[0]])
    if not images:
        raise _no_usable(root, len(paths), size)
    used = {name: index for name, index in classes.items() if index in set(labels)}
    log.info("loaded %d images in %d classes from %s", len(images), len(used), root)
    return ImageBank(images, kept_paths, labels, classes, held_out)


def drop_labels(
    class_ids: Tensor, probability: float, null_class: int, generator: torch.Generator
) -> Tensor:
    """Classifier-free guidance training: replace each label by the null class with `p`."""
    dropped = torch.rand(class_ids.shape, generator=generator) < probability
    return torch.where(dropped, torch.full_like(class_ids, null_class), class_ids)


def sr_condition(
    hr: Tensor, scale: int, degradation: str, max_aug_level: float, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """The upscaler's condition for HR crops and its CDM level: degrade, noise half the items at
    U(0, max) (the others at 0), then bicubic-upsample back to the HR size."""
    low_res = DEGRADATIONS[degradation](hr, scale, generator)
    batch = hr.shape[0]
    level = torch.rand(batch, generator=generator) * max_aug_level
    level = torch.where(torch.rand(batch, generator=generator) < 0.5, level, 0.0)
    # Noise the low-res image, as the cascade does at sampling time (Stage.run).
    low_res = noise_augment(low_res, level, generator)
    return upsample_condition(low_res, tuple(hr.shape[-2:])), level


def check_same_images(saved: Sequence[str], bank: ImageBank) -> None:
    """Warn when a resumed run's images differ from the ones it was trained on."""
    if list(saved) != bank.names:
        log.warning(
            "the data folder's usable images differ from the saved run's (%d now, %d then): "
            "training continues, but not exactly as the uninterrupted run would",
            len(bank),
            len(saved),
        )


def describe_classes(classes: Mapping[str, int]) -> str:
    """A one-line mapping for logs."""
    return ", ".join(
        f"{name}={index}" for name, index in sorted(classes.items(), key=lambda kv: kv[1])
    )
