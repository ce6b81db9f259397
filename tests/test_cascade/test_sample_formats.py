"""`cascade sample --format/--quality`: every file in the asked format with the parameters that
made it, an upscale's greyscale and alpha carried over, bad choices refused before any work."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from cascade.cli import main
from cascade.formats import read_parameters

TINY = [f"--weights={stage}=preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")]


def test_a_generation_as_jpeg_holds_its_parameters(tmp_path) -> None:
    main(["sample", "--size", "64", "--steps", "1", "--seed", "4", "--class", "1", "--format",
          "jpeg", "--quality", "70", "--out", str(tmp_path), *TINY])  # fmt: skip
    with Image.open(tmp_path / "seed4_base64.jpg") as image:
        assert image.format == "JPEG" and image.size == (64, 64)
        parameters = read_parameters(image)
    assert parameters["kind"] == "generation" and parameters["seed"] == 4
    assert parameters["class_name"] == "goldfish" and parameters["size"] == 64
    assert parameters["stages"][0]["model"] == "preset base64-tiny (random weights)"


@pytest.mark.parametrize(
    ("mode", "format", "suffix"), [("L", "png", "png"), ("RGBA", "webp", "webp")]
)
def test_an_upscale_keeps_greyscale_and_alpha(tmp_path, mode: str, format: str, suffix: str):
    pixels = np.random.default_rng(0).integers(0, 256, (20, 24, 4), dtype=np.uint8)
    source = tmp_path / "in.png"
    Image.fromarray(pixels, "RGBA").convert(mode).save(source)
    main(["sample", "--upscale", str(source), "--steps", "1", "--seed", "2", "--format", format,
          "--out", str(tmp_path / "out"), *TINY])  # fmt: skip
    with Image.open(tmp_path / "out" / f"seed2_sr256.{suffix}") as image:
        assert image.mode == mode and image.size == (96, 80)
        assert read_parameters(image)["filename"] == "in.png"


def test_bad_format_choices_exit_with_what_is_allowed(tmp_path, capsys) -> None:
    with pytest.raises(SystemExit) as exit:
        main(["sample", "--size", "64", "--format", "png", "--quality", "50", *TINY])
    assert exit.value.code == 2
    assert "quality applies to webp and jpeg only" in capsys.readouterr().err
    buffer = io.BytesIO()
    Image.new("RGBA", (16, 16)).save(buffer, format="PNG")
    (tmp_path / "a.png").write_bytes(buffer.getvalue())
    with pytest.raises(SystemExit):
        main(["sample", "--upscale", str(tmp_path / "a.png"), "--format", "jpeg", *TINY])
    assert "ask for png or webp" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sample", "--format", "gif"])
    error = capsys.readouterr().err
    assert "--format: invalid choice: 'gif'" in error
    assert all(name in error for name in ("png", "webp", "jpeg"))
