"""The `cascade` command line: sample, upscale, convert, presets, info, classes, demo-data, train,
eval, distill, train-deblock.

Each subcommand owns its arguments (`add_arguments` beside its `main`). Packages above the
maths add their own subcommands through the `cascade.commands` entry-point group (the service's
`serve` and `worker`, the benchmarks' `bench`): each entry is a `register(subcommands)` function,
so this package never imports them.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from cascade import deblock_train, distill, evaluation, logformat, train_command, upscale_command
from cascade.formats import Output
from cascade.stages import EXTENSIONS, SIZES
from cascade.upscale_command import (
    GLOB_CHARACTERS,
    add_run_arguments,
    note_random_weights,
    parse_weights,
    stage_runs,
)
from cascade.upscale_files import file_output, stage_labels, upscale_image

if TYPE_CHECKING:  # the heavy modules load only for the subcommands that need them
    from tqdm import tqdm

    from cascade.chain import Cascade
    from cascade.stages import StageRun

COMMANDS_GROUP = "cascade.commands"
log = logging.getLogger(__name__)


def _sample(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from cascade.chain import Cascade
    from cascade.classes import class_names, resolve_class
    from cascade.images import save_image
    from cascade.pipeline import default_weights

    _check_output(args)
    if args.upscale:
        _check_upscale_source(args.upscale)
    weights = {**default_weights(), **parse_weights(args.weights)}
    cascade = Cascade.load(weights, device=args.device)
    note_random_weights(cascade)
    runs = stage_runs(cascade, args)
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    seeds = [seed + i for i in range(args.batch)]
    bars: dict[str, tqdm] = {}

    def progress(stage: str, step: int, total: int, x0: object) -> None:
        bar = bars.setdefault(stage, tqdm(total=total, desc=stage, unit="step", leave=True))
        bar.update(step - bar.n)

    started = time.perf_counter()
    out = Path(args.out)
    if args.upscale:
        _upscale(args, cascade, runs, seeds, bars, out)
    else:
        class_id = resolve_class(args.class_id)
        result = cascade.generate(
            [class_id] * args.batch,
            args.size,
            seeds,
            runs=runs,
            callback=progress,
        )
        names = list(result.images)
        for stage, images in result.images.items():
            made = names[: names.index(stage) + 1]
            for index, image in enumerate(images):
                request = {"class_id": class_id, "class_name": class_names()[class_id]}
                request["size"] = args.size
                output = Output(args.format, args.quality)
                output = file_output(
                    output, cascade, runs, made, seeds[index], "generation", request
                )
                print(save_image(image, _path(args, out, seeds[index], stage), output))
    for bar in bars.values():
        bar.close()
    print(f"seed {seed}, {time.perf_counter() - started:.1f} s")


def _check_upscale_source(sources: Sequence[str]) -> None:
    """`sample --upscale` takes one image file; folders, globs and several files are
    `cascade upscale`'s (ValueError saying so)."""
    batch = f"`cascade upscale {' '.join(sources)} --out DIR`"
    if len(sources) > 1:
        raise ValueError(f"--upscale takes one image, got {len(sources)}: for several use {batch}")
    source = Path(sources[0])
    if source.is_dir():
        raise ValueError(f"--upscale takes one image file; {source} is a folder: use {batch}")
    if not source.exists() and GLOB_CHARACTERS & set(sources[0]):
        raise ValueError(f"--upscale takes one image file, not a pattern: for {source} use {batch}")


def _upscale(
    args: argparse.Namespace,
    cascade: Cascade,
    runs: dict[str, StageRun],
    seeds: list[int],
    bars: dict[str, tqdm],
    out: Path,
) -> None:
    """Each seed's upscale, one at a time (`cascade.upscale_files.upscale_image`: the input
    decoded once to uint8, the last stage encoded straight to its file), every stage's result
    written, with a progress bar over each stage's tiles and steps."""
    from tqdm import tqdm

    from cascade.formats import check_output
    from cascade.images import load_image_carried

    source = args.upscale[0]
    image, carried = load_image_carried(source)
    check_output(args.format, args.quality, alpha=carried.alpha is not None)
    if carried.bits > 8:
        log.info("%s: %d-bit input reduced to 8 bits per channel", source, carried.bits)
    stages = cascade.plan_upscale(*image.shape[-2:], args.scale)
    names = [stage.name for stage in stages]
    labels = stage_labels(stages, *image.shape[-2:])
    request = {"scale": args.scale, "filename": Path(source).name}
    output = Output(args.format, args.quality, carried)
    for seed in seeds:
        files = {
            name: (
                _path(args, out, seed, name),
                file_output(output, cascade, runs, names[: index + 1], seed, "upscale", request),
            )
            for index, name in enumerate(names)
        }

        def progress(name: str, step: int, total: int, x0: object, seed: int = seed) -> None:
            key = f"{seed}:{name}"
            if key not in bars:
                bars[key] = tqdm(desc=labels[name], unit="step", leave=True)
            bars[key].total = total
            bars[key].update(step - bars[key].n)

        paths = upscale_image(
            stages, image, seed, runs, files, callback=progress, jpeg_quality=carried.jpeg_quality
        )
        for path in paths:
            print(path)


def _check_output(args: argparse.Namespace) -> None:
    """--format and --quality the encoder can write (ValueError: the CLI's exit status 2)."""
    from cascade.formats import check_output

    check_output(args.format, args.quality)


def _path(args: argparse.Namespace, out: Path, seed: int, stage: str) -> Path:
    return out / f"seed{seed}_{stage}.{EXTENSIONS[args.format]}"


def _convert(args: argparse.Namespace) -> None:
    import torch

    from cascade.convert import convert

    spec = convert(
        args.family,
        args.source,
        args.destination,
        preset=args.preset,
        config=args.config,
        dtype=torch.float16 if args.fp16 else None,
    )
    print(f"wrote {args.destination}: {spec.description or spec.family}")


def _presets(args: argparse.Namespace) -> None:
    from cascade.checkpoints import spec_summary
    from cascade.presets import PRESETS

    for name, spec in PRESETS.items():
        print(f"{name:14s} {spec_summary(spec)}")


def _info(args: argparse.Namespace) -> None:
    from cascade.checkpoints import read_spec, spec_summary
    from cascade.classes import class_names

    spec, metadata = read_spec(args.checkpoint)
    print(spec_summary(spec))
    if spec.class_conditional:
        names = class_names()
        if spec.classes:
            listed = ", ".join(f"{index} {names[index]}" for index in spec.classes)
            print(f"classes ({len(spec.classes)}): {listed}")
        else:
            print("classes: every ImageNet class (0..999)")
    print(json.dumps({k: v for k, v in metadata.items() if k != "cascade.spec"}, indent=2))


def _classes(args: argparse.Namespace) -> None:
    from cascade.classes import class_names

    for index, name in enumerate(class_names()):
        print(index, name)


def _demo_data(args: argparse.Namespace) -> None:
    from cascade.demo import export_demo_data

    for name, folder in export_demo_data(args.out, debian=args.debian).items():
        print(f"{name}: {folder}")


def _plugins(commands: argparse._SubParsersAction) -> None:
    """Subcommands registered by installed packages (`cascade.commands` entry points)."""
    for entry in entry_points(group=COMMANDS_GROUP):
        try:
            register = entry.load()
        except ImportError as error:  # e.g. the bench package in an image that leaves it out
            log.debug("subcommand %s unavailable: %s", entry.name, error)
            continue
        register(commands)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample", help="generate or upscale into PNG, WebP or JPEG")
    sample.add_argument("--class", dest="class_id", default="207", help="class id or name")
    sample.add_argument("--size", type=int, default=256, choices=list(SIZES))
    sample.add_argument(
        "--upscale",
        metavar="IMAGE",
        nargs="+",
        help="upscale this one image instead (several images, folders or globs: cascade upscale)",
    )
    sample.add_argument("--batch", type=int, default=1)
    sample.add_argument("--guidance", type=float, default=1.0)
    sample.add_argument("--out", default="samples")
    add_run_arguments(sample)
    sample.set_defaults(run=_sample)

    upscale = commands.add_parser(
        "upscale",
        help="upscale images, folders and globs into one folder",
        description="Upscale every INPUT into DIR as <stem>_x<scale>.<ext> under one progress "
        "bar (counting images). Existing outputs are skipped unless --overwrite; a bad input "
        "is reported and skipped. Exit status: the number of inputs that failed (at most "
        f"{upscale_command.MAX_STATUS}), 0 when all were written or skipped; 2 also for a "
        "usage error, which writes nothing.",
    )
    upscale_command.add_arguments(upscale)
    upscale.set_defaults(run=upscale_command.main)

    convert = commands.add_parser("convert", help="convert released SR3/ADM weights")
    convert.add_argument("family", choices=["sr3", "adm"])
    convert.add_argument("source")
    convert.add_argument("destination")
    convert.add_argument("--preset", help="released preset (inferred from shapes when omitted)")
    convert.add_argument("--config", help="JSON training config when no preset fits")
    convert.add_argument("--fp16", action="store_true", help="store weights as float16")
    convert.set_defaults(run=_convert)

    commands.add_parser("presets", help="list model presets").set_defaults(run=_presets)
    commands.add_parser("classes", help="list class ids and names").set_defaults(run=_classes)
    info = commands.add_parser("info", help="describe a checkpoint")
    info.add_argument("checkpoint")
    info.set_defaults(run=_info)

    demo = commands.add_parser("demo-data", help="export the demo photos and their data card")
    demo.add_argument("--out", default="data/demo")
    demo.add_argument(
        "--no-debian",
        dest="debian",
        action="store_false",
        help="scikit-image photos only: skip the Debian wallpaper photos (apt-get download)",
    )
    demo.set_defaults(run=_demo_data)

    train = commands.add_parser("train", help="train a stage")
    train_command.add_arguments(train)
    train.set_defaults(run=train_command.main)

    evaluate = commands.add_parser("eval", help="evaluate an upscaler against bicubic")
    evaluation.add_arguments(evaluate)
    evaluate.set_defaults(run=evaluation.main)
    distil = commands.add_parser("distill", help="distil an upscaler into a few-step student")
    distill.add_arguments(distil)
    distil.set_defaults(run=distill.main)
    deblock = commands.add_parser("train-deblock", help="train the JPEG pre-clean network")
    deblock_train.add_arguments(deblock)
    deblock.set_defaults(run=deblock_train.main)

    _plugins(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        logformat.configure(logging.DEBUG if args.verbose else logging.INFO)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()
