"""The demo data set: real photos that ship with scikit-image, laid out for `cascade train`."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger(__name__)

# One class per source photo, named by the nearest ImageNet label so requests by class name work.
BASE_CLASSES = {
    "chelsea": "tabby",
    "coffee": "espresso",
    "rocket": "missile",
    "astronaut": "space shuttle",
    "stereo_motorcycle": "moped",
    "brick": "stone wall",
    "clock": "wall clock",
}
# Upscalers train on crops of these and are evaluated on the held-out ones.
SR_TRAIN = (
    "astronaut",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
    "stereo_motorcycle",
    "camera",
    "moon",
    "grass",
    "gravel",
    "brick",
    "coins",
)
SR_HOLD_OUT = ("chelsea", "coffee")


def _photo(name: str) -> Image.Image:
    import skimage.data

    array = getattr(skimage.data, name)()
    if isinstance(array, tuple):  # stereo pairs: the left view
        array = array[0]
    array = np.asarray(array)
    if array.dtype != np.uint8:
        array = (array * 255).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(array)
    return image.convert("RGB")


def export_demo_data(out: str | Path) -> dict[str, Path]:
    """Write `base/<class>/<photo>.png`, `sr/train/*.png` and `sr/holdout/*.png` under `out`."""
    out = Path(out)
    folders = {
        "base": out / "base",
        "sr_train": out / "sr" / "train",
        "sr_holdout": out / "sr" / "holdout",
    }
    for photo, class_name in BASE_CLASSES.items():
        path = folders["base"] / class_name / f"{photo}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        _photo(photo).save(path)
    for key, names in (("sr_train", SR_TRAIN), ("sr_holdout", SR_HOLD_OUT)):
        folders[key].mkdir(parents=True, exist_ok=True)
        for photo in names:
            _photo(photo).save(folders[key] / f"{photo}.png")
    log.info("demo data written under %s", out)
    return folders
