"""`cascade demo-data`: the Debian allow-list, the hold-out split and the offline fallback."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from PIL import Image

from cascade import debian, demo

COPYRIGHT = """Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/

Files: 16.04/Dragonfly_by_Bolly.jpg
Copyright: "Bolly", 2018
License: CC-BY-SA-4.0

Files: 16.04/picosdeeuropa_by_Aitzol_Berasategi.jpg
 16.04/sunset_by_Aitzol_Berasategi.jpg
Copyright: Aitzol Berasategi, 2018
License: CC-BY-4.0

Files: 16.04/umang_by_Abhishek_Mudgal.jpg
Copyright: Abhishek Mudgal, 2018
License: CC-BY-4.0

Files: 16.04/Bridge_by_Sander_Klootwijk.jpg
Copyright: 2018. Sander Klootwijk
License: GPL-2+

License: CC-BY-4.0
 Attribution 4.0 International
 .
 Files: not/a/stanza.jpg
"""

MATE_COPYRIGHT = """Files: nature/Aqua.jpg
       nature/RainDrops.jpg
Copyright: 2008, Someone
License: GPL-2+
"""


def _jpeg(path: Path, size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, (200, 100, 50)).save(path, quality=90)


def _fake_lomiri(root: Path) -> Path:
    """An unpacked lomiri-wallpapers-16.04 with listed, unlisted and mislicensed images."""
    folder = root / "usr/share/backgrounds"
    for name in (
        "Dragonfly_by_Bolly.jpg",
        "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "sunset_by_Aitzol_Berasategi.jpg",
        "umang_by_Abhishek_Mudgal.jpg",  # rendered: not allow-listed
        "Bridge_by_Sander_Klootwijk.jpg",  # licence differs from the allow-list
        "stranger.jpg",
    ):
        _jpeg(folder / name)
    doc = root / "usr/share/doc/lomiri-wallpapers-16.04/copyright"
    doc.parent.mkdir(parents=True)
    doc.write_text(COPYRIGHT)
    return root


def _fake_mate(root: Path) -> Path:
    """An unpacked mate-backgrounds: nature/ photos plus an allow-listed name elsewhere."""
    nature = root / "usr/share/backgrounds/mate/nature"
    _jpeg(nature / "Aqua.jpg", (64, 48))
    _jpeg(nature / "RainDrops.jpg")
    _jpeg(root / "usr/share/backgrounds/mate/abstract/Wood.jpg")  # outside nature/
    _jpeg(root / "usr/share/backgrounds/mate/abstract/Flow.png")
    doc = root / "usr/share/doc/mate-backgrounds/copyright"
    doc.parent.mkdir(parents=True)
    doc.write_text(MATE_COPYRIGHT)
    return root


@pytest.fixture
def tiny_skimage(monkeypatch: pytest.MonkeyPatch) -> None:
    """Replace the scikit-image photos by small images (the export logic is what is tested)."""
    monkeypatch.setattr(demo, "_photo", lambda name: Image.new("RGB", (24, 16), (10, 20, 30)))


def test_copyright_licences_reads_files_paragraphs(tmp_path: Path) -> None:
    path = tmp_path / "copyright"
    path.write_text(COPYRIGHT)
    licences = demo.copyright_licences(path)
    assert licences["Dragonfly_by_Bolly.jpg"] == "CC-BY-SA-4.0"
    assert licences["sunset_by_Aitzol_Berasategi.jpg"] == "CC-BY-4.0"  # continuation line
    assert "stanza.jpg" not in licences  # inside a licence text, not a Files field
    assert demo.copyright_licences(tmp_path / "missing") == {}


def test_allow_list_keeps_only_listed_photos(tmp_path: Path) -> None:
    lomiri = demo.select_photos(_fake_lomiri(tmp_path / "lomiri"), "lomiri-wallpapers-16.04")
    assert [p.name for p in lomiri] == [
        "Dragonfly_by_Bolly.jpg",
        "picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "sunset_by_Aitzol_Berasategi.jpg",
    ]
    mate = demo.select_photos(_fake_mate(tmp_path / "mate"), "mate-backgrounds")
    assert [p.relative_to(tmp_path / "mate").as_posix() for p in mate] == [
        "usr/share/backgrounds/mate/nature/Aqua.jpg",
        "usr/share/backgrounds/mate/nature/RainDrops.jpg",
    ]


def test_allow_list_matches_packages_and_hold_out() -> None:
    assert set(demo.DEBIAN_PHOTOS) == set(demo.DEBIAN_PACKAGES)
    listed = [name for photos in demo.DEBIAN_PHOTOS.values() for name in photos]
    assert len(listed) == len(set(listed))
    assert demo.DEBIAN_HOLD_OUT <= set(listed)
    assert "umang_by_Abhishek_Mudgal.jpg" not in listed


def test_hold_out_split_is_deterministic() -> None:
    names = [name for photos in demo.DEBIAN_PHOTOS.values() for name in photos]
    train, holdout = demo.split_debian(names)
    assert set(holdout) == demo.DEBIAN_HOLD_OUT and len(holdout) == 3
    assert sorted(train + holdout) == sorted(names)
    for seed in range(5):
        shuffled = names[:]
        random.Random(seed).shuffle(shuffled)
        assert demo.split_debian(shuffled) == (train, holdout)


def test_offline_writes_skimage_photos_and_says_debian_was_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = []

    def offline(package: str, cache: Path, update: bool = True) -> demo.DebianPackage:
        calls.append((package, update))
        raise demo.DebianUnavailable(f"apt-get download {package} failed: no network")

    monkeypatch.setattr(demo, "fetch_debian_package", offline)
    folders = demo.export_demo_data(tmp_path / "out", cache=tmp_path / "cache")
    assert calls == [("lomiri-wallpapers-16.04", True), ("mate-backgrounds", False)]
    assert sorted(p.stem for p in folders["sr_train"].iterdir()) == sorted(demo.SR_TRAIN)
    assert sorted(p.stem for p in folders["sr_holdout"].iterdir()) == sorted(demo.SR_HOLD_OUT)
    assert len(list(folders["base"].rglob("*.png"))) == len(demo.BASE_CLASSES)
    with Image.open(folders["sr_holdout"] / "chelsea.png") as image:
        assert image.size == (451, 300)
    card = folders["data_card"].read_text()
    assert "unavailable: apt-get download lomiri-wallpapers-16.04 failed: no network" in card
    assert "unavailable: apt-get download mate-backgrounds failed: no network" in card
    assert "| `sr/holdout/chelsea.png` | holdout |" in card
    assert "451×300" in card


def test_no_debian_never_fetches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_skimage: None
) -> None:
    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("fetched although debian=False")

    monkeypatch.setattr(demo, "fetch_debian_package", fail)
    card = demo.export_demo_data(tmp_path, debian=False)["data_card"].read_text()
    assert card.count("skipped (`--no-debian`)") == 2


def test_export_copies_debian_photos_with_split_and_card(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_skimage: None
) -> None:
    trees = {
        "lomiri-wallpapers-16.04": _fake_lomiri(tmp_path / "lomiri"),
        "mate-backgrounds": _fake_mate(tmp_path / "mate"),
    }

    def fetched(package: str, cache: Path, update: bool = True) -> demo.DebianPackage:
        return demo.DebianPackage(package, "1.0-1", trees[package])

    monkeypatch.setattr(demo, "fetch_debian_package", fetched)
    outputs = []
    for run in ("a", "b"):
        out = tmp_path / run
        demo.export_demo_data(out)
        outputs.append(sorted(p.relative_to(out).as_posix() for p in out.rglob("*.jpg")))
    assert outputs[0] == outputs[1]
    assert outputs[0] == [
        "sr/holdout/lomiri-wallpapers-16.04/picosdeeuropa_by_Aitzol_Berasategi.jpg",
        "sr/holdout/mate-backgrounds/RainDrops.jpg",
        "sr/train/lomiri-wallpapers-16.04/Dragonfly_by_Bolly.jpg",
        "sr/train/lomiri-wallpapers-16.04/sunset_by_Aitzol_Berasategi.jpg",
        "sr/train/mate-backgrounds/Aqua.jpg",
    ]
    source = trees["mate-backgrounds"] / "usr/share/backgrounds/mate/nature/Aqua.jpg"
    copied = tmp_path / "a/sr/train/mate-backgrounds/Aqua.jpg"
    assert copied.read_bytes() == source.read_bytes()
    card = (tmp_path / "a" / demo.CARD_NAME).read_text()
    assert (
        "| `sr/train/mate-backgrounds/Aqua.jpg` | train | Debian `mate-backgrounds` 1.0-1 "
        "| 64×48 | Charles Barbin | GPL-2+ |" in card
    )
    assert "used: 3 photos (version 1.0-1)" in card
    assert "umang" not in card and "Wood.jpg" not in card
    assert (tmp_path / "a/licences/mate-backgrounds.copyright").read_text() == MATE_COPYRIGHT


def test_fetch_uses_the_cache_without_apt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "mate-backgrounds"
    root.mkdir()
    (root / debian.CACHE_MARKER).write_text("1.26.0-1\n")

    def no_apt(*args: object, **kwargs: object) -> None:
        raise AssertionError("ran a command although the package is cached")

    monkeypatch.setattr(debian, "_run", no_apt)
    package = debian.fetch_debian_package("mate-backgrounds", tmp_path)
    assert package == debian.DebianPackage("mate-backgrounds", "1.26.0-1", root)


def test_fetch_without_apt_is_unavailable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get, no dpkg-deb
    with pytest.raises(debian.DebianUnavailable, match="apt-get is not installed"):
        debian.fetch_debian_package("mate-backgrounds", tmp_path / "cache")
    assert not (tmp_path / "cache" / "mate-backgrounds").exists()


def test_cli_no_debian_flag() -> None:
    from cascade.cli import build_parser

    assert build_parser().parse_args(["demo-data"]).debian is True
    assert build_parser().parse_args(["demo-data", "--no-debian"]).debian is False
