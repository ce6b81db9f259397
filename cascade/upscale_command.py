"""`cascade upscale`: images, folders and globs upscaled into one folder under one progress bar
(each image as `cascade sample --upscale` upscales it: `cascade.upscale_files.upscale_image`), and
the arguments the two commands share.

Each input is written as `<stem>_x<scale>.<ext>`, to a temporary name first and then renamed, so
an interrupted run leaves no half-written file; an existing output is skipped unless
`--overwrite`. A bad input (not an image, undecodable, too small, or past the output limit) is
reported with its reason and skipped, and the exit status is the number that failed.
"""

from __future__ import annotations

import argparse
import dataclasses
import glob
import random
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from cascade.chain import Cascade
from cascade.formats import Output, check_output
from cascade.images import load_image_carried
from cascade.stages import (
    COLOR_FIXES,
    DEFAULT_QUALITY,
    EXTENSIONS,
    LOSSY_FORMATS,
    LOW_BANDS,
    OUTPUT_FORMATS,
    SAMPLER_NAMES,
    SCALES,
    STAGES,
    StageRun,
    run_sampler,
    upscale_stages,
)
from cascade.upscale_files import file_output, stage_labels, stage_window, upscale_image

# What a folder's listing takes as images (a named file is tried whatever its name).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
MIN_SIDE = 8  # pixels on the shorter side; below it there is no picture to upscale
MAX_OUTPUT_PIXELS = 4096 * 4096  # the service's default limit (CASCADE_MAX_OUTPUT_PIXELS)
MAX_STATUS = 100  # the exit status counts failed inputs up to this
TILE_STEP = 64  # --tile in multiples of this: every stage's size multiple and scale divide it
GLOB_CHARACTERS = frozenset("*?[")


class InputError(ValueError):
    """An input the batch skips, and why."""


def add_stage_weights(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="STAGE=SOURCE",
        help="checkpoint path or preset:NAME per stage, e.g. sr256=weights/demo/sr256.safetensors "
        "(default: the demo weights when present, else the tiny random presets)",
    )


def parse_weights(items: Sequence[str]) -> dict[str, str]:
    weights = {}
    for item in items:
        stage, sep, source = item.partition("=")
        if not sep or stage not in STAGES:
            raise SystemExit(f"--weights expects STAGE=SOURCE with STAGE in {STAGES}, got {item!r}")
        weights[stage] = source
    return weights


def add_run_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments `cascade sample` and `cascade upscale` share: how each stage samples, the
    seed, the device, the file format and the stage weights."""
    parser.add_argument("--scale", type=int, default=SCALES[0], choices=list(SCALES))
    parser.add_argument("--color-fix", default="none", choices=COLOR_FIXES)
    parser.add_argument(
        "--fidelity",
        type=float,
        help="upscales: 1 the most faithful output (the same for every seed) .. 0 the full "
        "generative sample (default: each stage's default)",
    )
    parser.add_argument(
        "--low-band",
        choices=LOW_BANDS,
        help="upscales: where the frequencies the input carries come from: estimate (fidelity "
        "1's output; sampling adds only finer detail) or sample (default: estimate for the "
        "project's upscalers)",
    )
    parser.add_argument("--seed", type=int, help="default: a random one, printed at the end")
    parser.add_argument("--steps", type=int, help="sampler steps (default: each stage's)")
    parser.add_argument("--sampler", choices=SAMPLER_NAMES)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--format",
        default="png",
        choices=OUTPUT_FORMATS,
        help="file format of every image written; the generation parameters are embedded "
        "(PNG: an iTXt chunk, WebP and JPEG: XMP). An upscale's alpha, greyscale, ICC profile "
        "and EXIF carry over (jpeg holds no alpha)",
    )
    parser.add_argument(
        "--quality",
        type=int,
        help=f"{' and '.join(LOSSY_FORMATS)} only: 1..100 (default {DEFAULT_QUALITY})",
    )
    add_stage_weights(parser)


def stage_runs(cascade: Cascade, args: argparse.Namespace) -> dict[str, StageRun]:
    """Each loaded stage's defaults with the sampler, steps, guidance, colour fix, fidelity and
    low band the command line asks for."""
    runs = {}
    for name, stage in cascade.stages.items():
        steps = args.steps or stage.defaults.steps
        runs[name] = dataclasses.replace(
            stage.defaults,
            sampler=run_sampler(args.sampler, stage.defaults.sampler, steps),
            steps=steps,
            guidance=args.guidance,
            color_fix=args.color_fix,
            fidelity=args.fidelity,
            low_band=args.low_band,
        )
    return runs


def note_random_weights(cascade: Cascade) -> None:
    for stage in cascade.stages.values():
        if stage.model.random_weights:
            print(
                f"note: {stage.name} uses {stage.model.id}: random weights, not a trained model",
                file=sys.stderr,
            )


def folder_images(folder: Path, recursive: bool) -> list[Path]:
    """A folder's image files by suffix, sorted (hidden files left out: a run's temporary
    files among them); its subfolders' too when `recursive`."""
    entries = folder.rglob("*") if recursive else folder.iterdir()
    return sorted(
        path
        for path in entries
        if path.is_file()
        and path.suffix.lower() in IMAGE_SUFFIXES
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    )


def find_inputs(arguments: Sequence[str], recursive: bool = False) -> list[Path]:
    """The files the INPUT arguments name, in order, each once: a file as named, a folder's image
    files, a glob's matches (expanded here too, for shells that do not; `**` with `recursive`).
    ValueError naming an argument that yields no image."""
    found: dict[Path, Path] = {}
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            files = folder_images(path, recursive)
            if not files:
                deeper = "" if recursive else " (--recursive also looks in its subfolders)"
                raise ValueError(
                    f"{argument}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder"
                    + deeper
                )
        elif path.exists():
            files = [path]
        elif GLOB_CHARACTERS & set(argument):
            matches = [Path(match) for match in sorted(glob.glob(argument, recursive=recursive))]
            files = [
                file
                for match in matches
                for file in (folder_images(match, recursive) if match.is_dir() else [match])
            ]
            if not files:
                raise ValueError(f"{argument}: no file matches this pattern")
        else:
            raise ValueError(f"{argument}: no such file or folder")
        for file in files:
            found.setdefault(file.resolve(), file)
    return list(found.values())


def output_path(out: Path, source: Path, scale: int, format: str) -> Path:
    return out / f"{source.stem}_x{scale}.{EXTENSIONS[format]}"


def check_header(path: Path, scale: int, max_output_pixels: int) -> tuple[int, int]:
    """An input's (height, width) from its header alone (no pixels decoded); InputError when it
    is no image, smaller than MIN_SIDE, or its upscale would pass `max_output_pixels`."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                width, height = image.size
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as error:
        raise InputError(f"refused as a decompression bomb: {error}") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise InputError("not an image (PNG, JPEG, WebP, BMP or TIFF)") from None
    if min(height, width) < MIN_SIDE:
        raise InputError(
            f"{width}x{height} is too small: an input needs at least {MIN_SIDE} pixels on a side"
        )
    pixels = height * scale * width * scale
    if pixels > max_output_pixels:
        raise InputError(
            f"a {scale}x upscale of {width}x{height} would be {width * scale}x{height * scale} = "
            f"{pixels} pixels; the limit is {max_output_pixels} (--max-output-pixels)"
        )
    return height, width


def _tile_size(text: str) -> int:
    value = int(text) if text.isdigit() else 0
    if value < TILE_STEP or value % TILE_STEP:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a multiple of {TILE_STEP} pixels (64, 128, 192, 256, ...)"
        )
    return value


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of pixels above 0")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "inputs",
        nargs="+",
        metavar="INPUT",
        help="image files, folders (their image files: "
        f"{', '.join(IMAGE_SUFFIXES)}) and globs such as 'photos/*.jpg'",
    )
    parser.add_argument("--out", required=True, metavar="DIR", help="folder to write into")
    add_run_arguments(parser)
    parser.add_argument(
        "--tile",
        type=_tile_size,
        metavar="N",
        help="at most N x N output pixels per window, a multiple of 64 up to a stage's native "
        "size (256 for sr256, 1024 for sr1024: the default): less memory. The result changes "
        "only by the blend at the seams (every window draws noise keyed to its position)",
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace outputs that exist (default: skip them)"
    )
    parser.add_argument(
        "--recursive", action="store_true", help="folders' subfolders too, and ** in globs"
    )
    parser.add_argument(
        "--max-output-pixels",
        type=_positive,
        default=MAX_OUTPUT_PIXELS,
        metavar="PIXELS",
        help=f"refuse inputs whose upscale would pass this (default {MAX_OUTPUT_PIXELS}, the "
        "service's)",
    )
    parser.set_defaults(guidance=1.0)


def main(args: argparse.Namespace) -> None:
    """Upscale every input into --out; exit with the number of inputs that failed (at most
    MAX_STATUS), 0 when none did."""
    check_output(args.format, args.quality)
    out = Path(args.out)
    inputs = find_inputs(args.inputs, args.recursive)
    targets = {source: output_path(out, source, args.scale, args.format) for source in inputs}
    owners: dict[Path, Path] = {}
    for source, target in targets.items():
        if (first := owners.setdefault(target.resolve(), source)) != source:
            raise ValueError(
                f"{first} and {source} would both be written to {target}: rename one, or "
                "upscale them into separate --out folders"
            )
    written = skipped = 0
    failures: list[tuple[Path, str]] = []

    def fail(source: Path, reason: str) -> None:
        failures.append((source, reason))
        tqdm.write(f"failed {source}: {reason}", file=sys.stderr)

    sizes: dict[Path, tuple[int, int]] = {}
    for source, target in targets.items():
        if (owner := owners.get(source.resolve())) is not None:
            tqdm.write(f"skipped {source}: it is the output of {owner}", file=sys.stderr)
            skipped += 1
        elif target.exists() and not args.overwrite:
            tqdm.write(
                f"skipped {source}: {target} exists (--overwrite replaces it)", file=sys.stderr
            )
            skipped += 1
        else:
            try:
                sizes[source] = check_header(source, args.scale, args.max_output_pixels)
            except InputError as error:
                fail(source, str(error))
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    if sizes:
        needed = {name for size in sizes.values() for name in upscale_stages(*size, args.scale)}
        weights = parse_weights(args.weights)
        cascade = Cascade.load(
            weights, device=args.device, stages=[name for name in STAGES if name in needed]
        )
        note_random_weights(cascade)
        for stage in cascade.stages.values():
            stage_window(stage, args.tile)  # refuse a --tile a network cannot run, before work
        runs = stage_runs(cascade, args)
        written = _upscale_all(args, cascade, runs, seed, sizes, targets, fail)
    seeded = f" (seed {seed})" if sizes else ""
    print(
        f"{written} written, {skipped} skipped, {len(failures)} failed of {len(inputs)} inputs "
        f"into {out}{seeded}",
        file=sys.stderr,
    )
    if failures:
        raise SystemExit(min(len(failures), MAX_STATUS))


def _upscale_all(
    args: argparse.Namespace,
    cascade: Cascade,
    runs: Mapping[str, StageRun],
    seed: int,
    sizes: Mapping[Path, tuple[int, int]],
    targets: Mapping[Path, Path],
    fail: Callable[[Path, str], None],
) -> int:
    """Each input in turn under one bar counting images (each advances by its stages' steps);
    returns how many were written."""
    written = 0
    bar_format = "{l_bar}{bar}| {n:.1f}/{total} images [{elapsed}<{remaining}]"
    with tqdm(total=len(sizes), unit="image", bar_format=bar_format) as bar:
        for done, source in enumerate(sizes):
            try:
                image, carried = load_image_carried(source)
            except (OSError, SyntaxError, ValueError) as error:  # truncated, or a mode refused
                fail(source, f"cannot decode it: {error}")
                bar.update(done + 1 - bar.n)
                continue
            try:
                check_output(args.format, args.quality, alpha=carried.alpha is not None)
                stages = cascade.plan_upscale(*image.shape[-2:], args.scale)
            except ValueError as error:
                fail(source, str(error))
                bar.update(done + 1 - bar.n)
                continue
            names = [stage.name for stage in stages]
            labels = stage_labels(stages, *image.shape[-2:], args.tile)
            request = {"scale": args.scale, "filename": source.name, "tile": args.tile}
            output = Output(args.format, args.quality, carried)
            output = file_output(output, cascade, runs, names, seed, "upscale", request)

            progress = partial(_advance, bar, done, f"{source.name}: ", names, labels)
            files = {names[-1]: (targets[source], output)}
            try:
                paths = upscale_image(
                    stages, image, seed, runs, files, tile=args.tile, callback=progress,
                    jpeg_quality=carried.jpeg_quality,
                )  # fmt: skip
                for path in paths:
                    tqdm.write(str(path), file=sys.stdout)
                written += 1
            except (OSError, RuntimeError, ValueError) as error:  # out of memory among them
                fail(source, f"{type(error).__name__}: {error}")
            bar.update(done + 1 - bar.n)
    return written


def _advance(
    bar: tqdm,
    done: int,
    title: str,
    names: Sequence[str],
    labels: Mapping[str, str],
    name: str,
    step: int,
    total: int,
    x0: object,
) -> None:
    """Move the batch's bar to `done` images and the share of this one's stages and steps."""
    bar.set_description(title + labels[name], refresh=False)
    bar.update(done + (names.index(name) + step / total) / len(names) - bar.n)
