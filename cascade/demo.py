"""The demo data set: real photos from scikit-image and two Debian wallpaper packages, laid out
for `cascade train`, with a data card (DATA.md) that credits each photo.

The Debian packages are fetched by name (`apt-get download`, `dpkg-deb -x`; `cascade.debian`)
once and kept unpacked under a cache folder. Only the photographs allow-listed below are used,
and only when the package's own copyright file states the licence recorded here. Without apt
or a network the scikit-image photos are written alone and the data card says what was
unavailable.
"""

from __future__ import annotations

import importlib.metadata
import logging
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from cascade.debian import (
    DebianPackage,
    DebianUnavailable,
    copyright_licences,
    default_cache,
    fetch_debian_package,
)

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

# Author (or source) and licence of each scikit-image photo, as its `skimage.data` docstring
# states them; "not stated" where the docstring says nothing.
SKIMAGE_CREDITS: dict[str, tuple[str, str]] = {
    "astronaut": ("NASA", "public domain"),
    "brick": ("CC0Textures (Bricks25), transformed by scikit-image", "CC0"),
    "camera": ("Lav Varshney", "CC0"),
    "chelsea": ("Stefan van der Walt", "CC0"),
    "clock": ("Stefan van der Walt", "public domain"),
    "coffee": ("Rachel Michetti (courtesy of Pikolo Espresso Bar)", "CC0"),
    "coins": ("Brooklyn Museum", "no known copyright restrictions"),
    "grass": ("linolafett (DeviantArt), cropped by scikit-image", "CC0"),
    "gravel": ("CC0Textures (Gravel04), cropped by scikit-image", "CC0"),
    "hubble_deep_field": ("NASA", "public domain"),
    "immunohistochemistry": (
        "Center for Microscopy And Molecular Imaging (CMMI)",
        "no known copyright restrictions",
    ),
    "moon": ("not stated", "not stated"),
    "retina": ("Mikael Häggström (Wikimedia Commons)", "CC0-1.0"),
    "rocket": ("SpaceX", "public domain"),
    "stereo_motorcycle": ("Middlebury 2014 stereo benchmark (Scharstein et al.)", "not stated"),
}

# Where each Debian package keeps its photos (mate-backgrounds: nature/ only; abstract/ and
# desktop/ are rendered artwork).
DEBIAN_PACKAGES: dict[str, str] = {
    "lomiri-wallpapers-16.04": "usr/share/backgrounds",
    "mate-backgrounds": "usr/share/backgrounds/mate/nature",
}
# The photographs in those folders, each image inspected by eye: file name -> (author, licence)
# as the package's usr/share/doc/<package>/copyright file states them (Debian bookworm:
# lomiri-wallpapers-16.04 20.04.0-2, mate-backgrounds 1.26.0-1). Left out on purpose:
# umang_by_Abhishek_Mudgal.jpg (lomiri), a rendered colour gradient.
DEBIAN_PHOTOS: dict[str, dict[str, tuple[str, str]]] = {
    "lomiri-wallpapers-16.04": {
        "Bridge_by_Sander_Klootwijk.jpg": ("Sander Klootwijk", "CC-BY-SA-4.0"),
        "Dragonfly_by_Bolly.jpg": ('"Bolly"', "CC-BY-SA-4.0"),
        "Picture_0B_by_freespace.jpg": ('Trevor "Freespace"', "CC-BY-4.0"),
        "Picture_1A_by_freespace.jpg": ('Trevor "Freespace"', "CC-BY-4.0"),
        "Wine_by_Jakkub_Mede.jpg": ("Jakub Mede", "CC-BY-4.0"),
        "aitzgorri_by_Aitzol_Berasategi.jpg": ("Aitzol Berasategi", "CC-BY-4.0"),
        "analogpattern_by_Peter_Nerlich.jpg": ("Peter Nerlich", "CC-BY-SA-4.0"),
        "free_by_Peter_Nerlich.jpg": ("Peter Nerlich", "CC-BY-SA-4.0"),
        "friends_by_Aitzol_Berasategi.jpg": ("Aitzol Berasategi", "CC-BY-4.0"),
        "greentock_by_Peter_Nerlich.jpg": ("Peter Nerlich", "CC-BY-SA-4.0"),
        "life_by_Aitzol_Berasategi.jpg": ("Aitzol Berasategi", "CC-BY-4.0"),
        "picosdeeuropa_by_Aitzol_Berasategi.jpg": ("Aitzol Berasategi", "CC-BY-4.0"),
        "seeding_by_Clements_Engelhardt.jpg": ("Clemens Engelhardt", "CC0-1.0"),
        "sunset_by_Aitzol_Berasategi.jpg": ("Aitzol Berasategi", "CC-BY-4.0"),
    },
    "mate-backgrounds": {
        "Aqua.jpg": ("Charles Barbin", "GPL-2+"),
        "Blinds.jpg": ("Lennart Poettering; Andrea Cimitan", "GPL-2+"),
        "Dune.jpg": ("Marco Cogoni; Hylke Bons", "GPL-2+"),
        "FreshFlower.jpg": ("Jens Ansorg", "GPL-2+"),
        "Garden.jpg": ("Charles Barbin", "GPL-2+"),
        "GreenMeadow.jpg": ("Timothy Schellhase; Lapo Calamandrei", "GPL-2+"),
        "LadyBird.jpg": ("Charles Barbin", "GPL-2+"),
        "RainDrops.jpg": ('"blackcombwhistler07"', "GPL-2+"),
        "Storm.jpg": ("Sergey Nazarov", "GPL-2+"),
        "TwoWings.jpg": ("Charles Barbin; Hylke Bons", "GPL-2+"),
        "Wood.jpg": ("Jean-François Fortin Tam", "GPL-2+"),
        "YellowFlower.jpg": ("Charles Barbin", "GPL-2+"),
    },
}
# Debian photos kept for the project's own evaluation (a landscape, an object, a macro).
DEBIAN_HOLD_OUT = frozenset(
    {"picosdeeuropa_by_Aitzol_Berasategi.jpg", "Picture_0B_by_freespace.jpg", "RainDrops.jpg"}
)

CARD_NAME = "DATA.md"


@dataclass(frozen=True)
class CardEntry:
    """One photo in the data card."""

    path: str  # relative to the output folder
    source: str
    size: tuple[int, int]  # width, height
    author: str
    licence: str
    split: str


def select_photos(root: Path, package: str) -> list[Path]:
    """The allow-listed photos in the unpacked `package` at `root`, sorted; others skipped."""
    folder = root / DEBIAN_PACKAGES[package]
    allowed = DEBIAN_PHOTOS[package]
    stated = copyright_licences(root / "usr" / "share" / "doc" / package / "copyright")
    files = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    kept = []
    for path in files:
        if path.name not in allowed:
            log.info("skipping %s from %s: not an allow-listed photograph", path.name, package)
        elif stated.get(path.name) != allowed[path.name][1]:
            log.warning(
                "skipping %s from %s: its copyright file states licence %r, the allow-list %r",
                path.name,
                package,
                stated.get(path.name),
                allowed[path.name][1],
            )
        else:
            kept.append(path)
    missing = sorted(set(allowed) - {path.name for path in files})
    if missing:
        log.warning("%s lacks %d allow-listed photo(s): %s", package, len(missing), missing)
    return kept


def split_debian(names: Iterable[str]) -> tuple[list[str], list[str]]:
    """(train, holdout) Debian file names, each sorted: DEBIAN_HOLD_OUT ones are held out."""
    unique = sorted(set(names))
    return (
        [name for name in unique if name not in DEBIAN_HOLD_OUT],
        [name for name in unique if name in DEBIAN_HOLD_OUT],
    )


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


def _write_skimage(name: str, folder: Path, out: Path, split: str, source: str) -> CardEntry:
    """Save `skimage.data.<name>` as folder/<name>.png and describe it for the card."""
    folder.mkdir(parents=True, exist_ok=True)
    image = _photo(name)
    path = folder / f"{name}.png"
    image.save(path)
    author, licence = SKIMAGE_CREDITS[name]
    return CardEntry(
        path.relative_to(out).as_posix(),
        f"{source} (`skimage.data.{name}`)",
        image.size,
        author,
        licence,
        split,
    )


def _copy_debian(package: DebianPackage, folders: dict[str, Path], out: Path) -> list[CardEntry]:
    """Copy the package's allow-listed photos (bytes as shipped) into sr/train and sr/holdout."""
    photos = {path.name: path for path in select_photos(package.root, package.name)}
    train, holdout = split_debian(photos)
    entries = []
    for key, split, names in (("sr_train", "train", train), ("sr_holdout", "holdout", holdout)):
        for name in names:
            target = folders[key] / package.name / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(photos[name], target)
            with Image.open(target) as image:
                size = image.size
            author, licence = DEBIAN_PHOTOS[package.name][name]
            source = f"Debian `{package.name}` {package.version}"
            entries.append(
                CardEntry(target.relative_to(out).as_posix(), source, size, author, licence, split)
            )
    copyright_file = package.root / "usr" / "share" / "doc" / package.name / "copyright"
    if entries and copyright_file.is_file():
        licences = out / "licences"
        licences.mkdir(exist_ok=True)
        shutil.copyfile(copyright_file, licences / f"{package.name}.copyright")
    log.info(
        "%s %s: %d photos (%d held out)", package.name, package.version, len(entries), len(holdout)
    )
    return entries


def write_data_card(out: Path, entries: list[CardEntry], sources: dict[str, str]) -> Path:
    """Write out/DATA.md: the sources and their status, then one row per photo."""
    counts = {split: sum(e.split == split for e in entries) for split in ("train", "holdout")}
    base = len(entries) - counts["train"] - counts["holdout"]
    lines = [
        "# Demo data card",
        "",
        f"Written by `cascade demo-data`: {len(entries)} photos, {base} in `base/` "
        f"(one class folder each), {counts['train']} in `sr/train/`, "
        f"{counts['holdout']} in `sr/holdout/`.",
        "",
        "## Sources",
        "",
        "| source | status |",
        "| --- | --- |",
        *(f"| {source} | {status} |" for source, status in sources.items()),
        "",
        "scikit-image photos are re-encoded as RGB PNG (grey ones with three equal channels); "
        "authors and licences are as their `skimage.data` docstrings state them. Debian photos "
        "are copied as shipped (original JPEG bytes, full resolution); authors and licences are "
        "as the packages' copyright files state them, and those files are copied to "
        "`licences/`. Only photographs allow-listed in `cascade/demo.py` are used: abstract and "
        "rendered wallpapers are left out.",
        "",
        "## Photos",
        "",
        "| file | split | source | size (px) | author | licence |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for e in entries:
        width, height = e.size
        lines.append(
            f"| `{e.path}` | {e.split} | {e.source} | {width}×{height} | {e.author} | {e.licence} |"
        )
    card = out / CARD_NAME
    card.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return card


def _warn_stale(out: Path, entries: list[CardEntry]) -> None:
    """Warn about image files under base/ and sr/ that this export did not write."""
    written = {e.path for e in entries}
    stale = sorted(
        path.relative_to(out).as_posix()
        for folder in (out / "base", out / "sr")
        for path in folder.rglob("*")
        if path.is_file() and path.relative_to(out).as_posix() not in written
    )
    if stale:
        log.warning(
            "%d file(s) under %s are not from this export and not in %s (an earlier run?): %s",
            len(stale),
            out,
            CARD_NAME,
            ", ".join(stale[:10]) + (" ..." if len(stale) > 10 else ""),
        )


def export_demo_data(
    out: str | Path, debian: bool = True, cache: str | Path | None = None
) -> dict[str, Path]:
    """Write `base/<class>/`, `sr/train/`, `sr/holdout/` photos and `DATA.md` under `out`."""
    out = Path(out)
    folders = {
        "base": out / "base",
        "sr_train": out / "sr" / "train",
        "sr_holdout": out / "sr" / "holdout",
    }
    skimage_source = f"scikit-image {importlib.metadata.version('scikit-image')}"
    entries = [
        _write_skimage(
            photo, folders["base"] / class_name, out, f"base ({class_name})", skimage_source
        )
        for photo, class_name in BASE_CLASSES.items()
    ]
    for key, split, names in (
        ("sr_train", "train", SR_TRAIN),
        ("sr_holdout", "holdout", SR_HOLD_OUT),
    ):
        folders[key].mkdir(parents=True, exist_ok=True)
        entries += [_write_skimage(n, folders[key], out, split, skimage_source) for n in names]
    sources = {f"{skimage_source} (`skimage.data`)": f"used: {len(entries)} photos"}

    cache_dir = Path(cache) if cache is not None else default_cache()
    update = True  # apt-get update at most until a package fails: offline, it fails every time
    for name, folder in DEBIAN_PACKAGES.items():
        label = f"Debian package `{name}` (`/{folder}/`)"
        if not debian:
            sources[label] = "skipped (`--no-debian`)"
            continue
        try:
            package = fetch_debian_package(name, cache_dir, update=update)
        except DebianUnavailable as error:
            update = False
            log.warning(
                "Debian package %s is unavailable, its photos are left out: %s", name, error
            )
            sources[label] = f"unavailable: {error}"
            continue
        added = _copy_debian(package, folders, out)
        entries += added
        sources[label] = f"used: {len(added)} photos (version {package.version})"
    if not debian:
        log.info("Debian photos skipped: scikit-image photos only")

    card = write_data_card(out, entries, sources)
    _warn_stale(out, entries)
    log.info("demo data written under %s: %d photos, data card %s", out, len(entries), card)
    return {**folders, "data_card": card}
