"""The 1000 ImageNet class names, in the index order ADM's class-conditional weights use."""

from __future__ import annotations

from functools import cache
from importlib import resources


@cache
def class_names() -> tuple[str, ...]:
    """Class names by index (0..999)."""
    text = resources.files("cascade").joinpath("data/imagenet_classes.txt").read_text()
    return tuple(line.strip() for line in text.splitlines() if line.strip())


@cache
def _by_name() -> dict[str, int]:
    return {name.lower(): index for index, name in enumerate(class_names())}


def resolve_class(name_or_id: str | int) -> int:
    """A class index from an index or a (case-insensitive) name; ValueError if unknown."""
    if isinstance(name_or_id, int) or str(name_or_id).isdigit():
        index = int(name_or_id)
        if not 0 <= index < len(class_names()):
            raise ValueError(f"class id must be in 0..{len(class_names()) - 1}, got {index}")
        return index
    try:
        return _by_name()[str(name_or_id).strip().lower()]
    except KeyError:
        raise ValueError(f"unknown class name {name_or_id!r} (see `cascade classes`)") from None
