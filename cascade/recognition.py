"""Does the base draw the class it is asked for? Each sample's nearest training crop.

A class-conditional base trained on a few photos per class should give, for a class, images
whose closest training crop (pixel MSE, every 64x64 window of every training image and its
mirror, as the trainer draws them) comes from a photo of that class. The share of samples for
which it does is the base's class recall (`python -m bench.base_check CHECKPOINT --data DIR`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from cascade.datasets import ImageBank, to_float


@dataclass(frozen=True)
class CropBank:
    """Every training window of one size, float [N, 3, S, S] in [-1, 1], and its class."""

    crops: Tensor
    labels: Tensor  # [N] class ids

    @classmethod
    def from_bank(cls, bank: ImageBank, size: int, stride: int = 1) -> CropBank:
        """All `size` windows of every image in `bank` at `stride`, each also mirrored."""
        if bank.labels is None:
            raise ValueError("the image bank has no class labels (expected one folder per class)")
        crops, labels = [], []
        for image, label in zip(bank.images, bank.labels, strict=True):
            windows = to_float(image).unfold(1, size, stride).unfold(2, size, stride)
            # [3, rows, cols, S, S] -> [rows * cols, 3, S, S]
            windows = windows.permute(1, 2, 0, 3, 4).reshape(-1, 3, size, size)
            windows = torch.cat([windows, windows.flip(-1)])
            crops.append(windows)
            labels.append(torch.full((len(windows),), label, dtype=torch.long))
        return cls(torch.cat(crops), torch.cat(labels))

    def nearest(self, images: Tensor, chunk: int = 4096) -> tuple[Tensor, Tensor]:
        """For each image [B, 3, S, S]: the class of its nearest crop and that pixel MSE."""
        if images.shape[1:] != self.crops.shape[1:]:
            raise ValueError(
                f"images are {tuple(images.shape[1:])}, the crops {tuple(self.crops.shape[1:])}"
            )
        flat = images.flatten(1).float()
        best = torch.full((len(images),), float("inf"))
        best_index = torch.zeros(len(images), dtype=torch.long)
        for start in range(0, len(self.crops), chunk):
            part = self.crops[start : start + chunk].flatten(1)
            mse = torch.cdist(flat, part).square() / flat.shape[1]
            value, index = mse.min(dim=1)
            better = value < best
            best = torch.where(better, value, best)
            best_index = torch.where(better, index + start, best_index)
        return self.labels[best_index], best


def class_recall(asked: Sequence[int], images: Tensor, crops: CropBank) -> dict[str, object]:
    """Per asked class: how many samples' nearest crop is of that class, the classes the others
    were nearest to, and the mean nearest MSE."""
    found, mse = crops.nearest(images)
    per_class: dict[int, dict[str, object]] = {}
    for class_id in sorted(set(asked)):
        rows = [i for i, c in enumerate(asked) if c == class_id]
        nearest = Counter(int(found[i]) for i in rows)
        per_class[class_id] = {
            "samples": len(rows),
            "recall": nearest.pop(class_id, 0) / len(rows),
            "nearest_mse": float(mse[rows].mean()),
            "confused_with": dict(nearest),
        }
    hits = sum(int(f) == a for f, a in zip(found.tolist(), asked, strict=True))
    return {"recall": hits / len(asked), "samples": len(asked), "classes": per_class}
