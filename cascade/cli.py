"""The `cascade` command line: sample, convert, presets, info, classes, demo-data, train, eval.

Each subcommand owns its arguments (`add_arguments` beside its `main`). Packages above the
maths add their own subcommands through the `cascade.commands` entry-point group (the service's
`serve` and `worker`, the benchmarks' `bench`): each entry is a `register(subcommands)` function,
so this package never imports them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING

from cascade import distill, evaluation, logformat, train_command
from cascade.stages import (
    COLOR_FIXES,
    DEFAULT_QUALITY,
    EXTENSIONS,
    LOSSY_FORMATS,
    LOW_BANDS,
    OUTPUT_FORMATS,
    SAMPLER_NAMES,
    SIZES,
    STAGES,
)

if TYPE_CHECKING:  # the heavy modules load only for the subcommands that need them
    from tqdm import tqdm

    from cascade.chain import Cascade
    from cascade.formats import Carried, Output
    from cascade.stages import StageRun

COMMANDS_GROUP = "cascade.commands"
log = logging.getLogger(__name__)


def _add_stage_weights(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--weights",
        action="append",
        default=[],
        metavar="STAGE=SOURCE",
        help="checkpoint path or preset:NAME per stage, e.g. sr256=weights/demo/sr256.safetensors "
        "(default: the demo weights when present, else the tiny random presets)",
    )


def _parse_weights(items: Sequence[str]) -> dict[str, str]:
    weights = {}
    for item in items:
        stage, sep, source = item.partition("=")
        if not sep or stage not in STAGES:
            raise SystemExit(f"--weights expects STAGE=SOURCE with STAGE in {STAGES}, got {item!r}")
        weights[stage] = source
    return weights


def _sample(args: argparse.Namespace) -> None:
    from tqdm import tqdm

    from cascade.chain import Cascade
    from cascade.classes import class_names, resolve_class
    from cascade.images import save_image
    from cascade.pipeline import default_weights

    _check_output(args)
    weights = {**default_weights(), **_parse_weights(args.weights)}
    cascade = Cascade.load(weights, device=args.device)
    for stage in cascade.stages.values():
        if stage.model.random_weights:
            print(f"note: {stage.name} uses {stage.model.id}: random weights, not a trained model")
    runs = {
        name: dataclasses.replace(
            stage.defaults,
            sampler=args.sampler or stage.defaults.sampler,
            steps=args.steps or stage.defaults.steps,
            guidance=args.guidance,
            color_fix=args.color_fix,
            fidelity=args.fidelity,
            low_band=args.low_band,
        )
        for name, stage in cascade.stages.items()
    }
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
                output = _output(args, cascade, runs, made, seeds[index], "generation", request)
                print(save_image(image, _path(args, out, seeds[index], stage), output))
    for bar in bars.values():
        bar.close()
    print(f"seed {seed}, {time.perf_counter() - started:.1f} s")


def _upscale(
    args: argparse.Namespace,
    cascade: Cascade,
    runs: dict[str, StageRun],
    seeds: list[int],
    bars: dict[str, tqdm],
    out: Path,
) -> None:
    """Each seed's upscale, one at a time: the input decoded once to uint8, every stage but the
    last in float as the service runs it, the last written to its PNG by
    `cascade.tiled_upscale.upscale_to_png` (in tiles, encoded band by band, when larger than the
    network), with a progress bar over its tiles and steps."""
    from tqdm import tqdm

    from cascade.formats import check_output
    from cascade.images import load_image_carried, save_image
    from cascade.tiled_upscale import tile_count, upscale_to_file

    image, carried = load_image_carried(args.upscale)
    check_output(args.format, args.quality, alpha=carried.alpha is not None)
    if carried.bits > 8:
        log.info("%s: %d-bit input reduced to 8 bits per channel", args.upscale, carried.bits)
    stages = cascade.plan_upscale(*image.shape[-2:], args.scale)
    names = [stage.name for stage in stages]
    request = {"scale": args.scale, "filename": Path(args.upscale).name}
    for seed in seeds:
        x = image
        for index, stage in enumerate(stages):
            height, width = (side * stage.scale for side in x.shape[-2:])
            tiles = tile_count(stage, height, width) if stage.tiled(height, width) else 1
            label = f"{stage.name} {width}x{height}" + (f", {tiles} tiles" if tiles > 1 else "")
            bar = bars[f"{seed}:{stage.name}"] = tqdm(desc=label, unit="step", leave=True)

            def progress(step: int, total: int, x0: object, bar: tqdm = bar) -> None:
                bar.total = total
                bar.update(step - bar.n)

            path = _path(args, out, seed, stage.name)
            run = runs[stage.name]
            made = names[: index + 1]
            output = _output(args, cascade, runs, made, seed, "upscale", request, carried)
            if index == len(stages) - 1:
                print(upscale_to_file(stage, x, seed, path, output, run=run, callback=progress))
            else:
                x = stage.run(seeds=[seed], low_res=x, run=run, callback=progress).cpu()
                print(save_image(x, path, output))


def _check_output(args: argparse.Namespace) -> None:
    """--format and --quality the encoder can write (ValueError: the CLI's exit status 2)."""
    from cascade.formats import check_output

    check_output(args.format, args.quality)


def _path(args: argparse.Namespace, out: Path, seed: int, stage: str) -> Path:
    return out / f"seed{seed}_{stage}.{EXTENSIONS[args.format]}"


def _output(
    args: argparse.Namespace,
    cascade: Cascade,
    runs: dict[str, StageRun],
    stages: list[str],
    seed: int,
    kind: str,
    request: dict[str, object],
    carried: Carried | None = None,
) -> Output:
    """How one file is written: --format and --quality, what the input carries, and the
    parameters of the stages that made it (each stage's run as it applies to its model)."""
    from cascade.formats import Carried, Output, generation_parameters

    made = [
        (name, cascade.stages[name].model.id, cascade.stages[name].effective(runs[name]))
        for name in stages
    ]
    parameters = generation_parameters(kind, seed, made, **request)
    return Output(args.format, args.quality, carried or Carried(), parameters)


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
    sample.add_argument("--upscale", metavar="IMAGE", help="upscale this image instead")
    sample.add_argument("--scale", type=int, default=4, choices=[4, 16])
    sample.add_argument("--color-fix", default="none", choices=COLOR_FIXES)
    sample.add_argument(
        "--fidelity",
        type=float,
        help="upscales: 1 the most faithful output (the same for every seed) .. 0 the full "
        "generative sample (default: each stage's default)",
    )
    sample.add_argument(
        "--low-band",
        choices=LOW_BANDS,
        help="upscales: where the frequencies the input carries come from: estimate (fidelity "
        "1's output; sampling adds only finer detail) or sample (default: estimate for the "
        "project's upscalers)",
    )
    sample.add_argument("--seed", type=int)
    sample.add_argument("--batch", type=int, default=1)
    sample.add_argument("--steps", type=int)
    sample.add_argument("--sampler", choices=SAMPLER_NAMES)
    sample.add_argument("--guidance", type=float, default=1.0)
    sample.add_argument("--device", default="cpu")
    sample.add_argument("--out", default="samples")
    sample.add_argument(
        "--format",
        default="png",
        choices=OUTPUT_FORMATS,
        help="file format of every image written; the generation parameters are embedded "
        "(PNG: an iTXt chunk, WebP and JPEG: XMP). An upscale's alpha, greyscale, ICC profile "
        "and EXIF carry over (jpeg holds no alpha)",
    )
    sample.add_argument(
        "--quality",
        type=int,
        help=f"{' and '.join(LOSSY_FORMATS)} only: 1..100 (default {DEFAULT_QUALITY})",
    )
    _add_stage_weights(sample)
    sample.set_defaults(run=_sample)

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
