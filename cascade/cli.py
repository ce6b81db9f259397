"""The `cascade` command line: sample, convert, presets, info, and the service entry points."""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from cascade.stages import STAGES


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

    from cascade.classes import resolve_class
    from cascade.images import load_image, save_png
    from cascade.pipeline import Cascade, default_weights
    from cascade.samplers import SamplerSettings

    weights = {**default_weights(), **_parse_weights(args.weights)}
    cascade = Cascade.load(weights, device=args.device)
    for stage in cascade.stages.values():
        if stage.model.random_weights:
            print(f"note: {stage.name} uses {stage.model.id}: random weights, not a trained model")
    settings = {
        name: SamplerSettings(args.sampler or stage.sampler.name, args.steps or stage.sampler.steps)
        for name, stage in cascade.stages.items()
    }
    seed = args.seed if args.seed is not None else random.randrange(2**31)
    seeds = [seed + i for i in range(args.batch)]
    bars: dict[str, tqdm] = {}

    def progress(stage: str, step: int, total: int, x0: object) -> None:
        bar = bars.setdefault(stage, tqdm(total=total, desc=stage, unit="step", leave=True))
        bar.update(step - bar.n)

    started = time.perf_counter()
    if args.upscale:
        image = load_image(args.upscale)
        result = cascade.upscale(
            image.repeat(args.batch, 1, 1, 1),
            seeds,
            scale=args.scale,
            samplers=settings,
            color=args.color_fix,
            fidelity=args.fidelity,
            callback=progress,
        )
    else:
        class_id = resolve_class(args.class_id)
        result = cascade.generate(
            [class_id] * args.batch,
            args.size,
            seeds,
            samplers=settings,
            guidance=args.guidance,
            color=args.color_fix,
            callback=progress,
        )
    for bar in bars.values():
        bar.close()
    out = Path(args.out)
    for stage, images in result.images.items():
        for index, image in enumerate(images):
            path = save_png(image, out / f"seed{seeds[index]}_{stage}.png")
            print(path)
    print(f"seed {seed}, {time.perf_counter() - started:.1f} s")


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


def _delegate(module: str, function: str):
    """Subcommands implemented elsewhere (service, training); imported only when used."""

    def run(args: argparse.Namespace) -> None:
        getattr(importlib.import_module(module), function)(args)

    return run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cascade", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    sample = commands.add_parser("sample", help="generate or upscale into PNGs")
    sample.add_argument("--class", dest="class_id", default="207", help="class id or name")
    sample.add_argument("--size", type=int, default=256, choices=[64, 256, 1024])
    sample.add_argument("--upscale", metavar="IMAGE", help="upscale this image instead")
    sample.add_argument("--scale", type=int, default=4, choices=[4, 16])
    sample.add_argument("--color-fix", default="wavelet", choices=["none", "adain", "wavelet"])
    sample.add_argument(
        "--fidelity",
        type=float,
        help="upscales: 1 the most faithful output (the same for every seed) .. 0 the full "
        "generative sample (default: each stage's default)",
    )
    sample.add_argument("--seed", type=int)
    sample.add_argument("--batch", type=int, default=1)
    sample.add_argument("--steps", type=int)
    sample.add_argument("--sampler", choices=["ancestral", "ddpm", "ddim", "dpmpp_2m"])
    sample.add_argument("--guidance", type=float, default=1.0)
    sample.add_argument("--device", default="cpu")
    sample.add_argument("--out", default="samples")
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

    serve = commands.add_parser("serve", help="run API, embedded Redis and a worker")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=_delegate("workers.embedded", "main"))

    worker = commands.add_parser("worker", help="serve stage queues")
    worker.add_argument("--stages", default=",".join(STAGES))
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    worker.set_defaults(run=_delegate("workers.worker", "main"))

    train = commands.add_parser("train", help="train a stage")
    train.set_defaults(run=_delegate("cascade.training", "main"))
    _train_arguments(train)

    evaluate = commands.add_parser("eval", help="evaluate an upscaler against bicubic")
    evaluate.set_defaults(run=_delegate("cascade.evaluation", "main"))
    _eval_arguments(evaluate)

    bench = commands.add_parser("bench", help="run the benchmark suite")
    bench.add_argument("--json", default="bench.json", help="results (plot and markdown beside)")
    bench.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    bench.add_argument("--quick", action="store_true", help="fewer repeats and sizes")
    sections = "forward,samplers,service,throughput,tiling"
    bench.add_argument("--only", metavar="SECTIONS", help=f"run only these of {sections}")
    bench.add_argument("--skip", metavar="SECTIONS", help="run all but these")
    bench.add_argument("--data", help="held-out photos for the sampler figures")
    bench.add_argument("--report", help="markdown report (default: BENCHMARKS.md in the repo)")
    bench.add_argument(
        "--merge",
        action="append",
        default=[],
        metavar="JSON",
        help="add a run from another machine (e.g. a GPU) to the report",
    )
    bench.add_argument(
        "--report-only", action="store_true", help="measure nothing: report --json as it is"
    )
    bench.set_defaults(run=_delegate("workers.bench", "main"))
    return parser


def _train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", required=True, choices=list(STAGES))
    parser.add_argument("--data", required=True, help="image folder (base64: one folder/class)")
    parser.add_argument("--preset", help="model preset (default: the stage's -small preset)")
    parser.add_argument("--out", default="runs/train", help="output folder")
    parser.add_argument(
        "--steps", type=int, default=1000, help="total steps; a resume continues up to this number"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument(
        "--loss",
        choices=["l1", "l2"],
        help="upscalers only (default: l1 for eps-prediction as SR3, l2 for v); the base "
        "always trains with MSE",
    )
    parser.add_argument("--degradation", choices=["bicubic", "realistic"], default="bicubic")
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--label-dropout", type=float, default=0.1)
    parser.add_argument("--max-aug-level", type=float, default=0.2)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--resume", help="training state file to resume from")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--precision", choices=["float32", "bfloat16", "float16"], default="float32"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--hold-out",
        type=int,
        default=0,
        help="leave out the last N images (sorted by name) for evaluation",
    )
    parser.add_argument(
        "--crop", type=int, help="training crop size (default: the preset's native output size)"
    )
    parser.add_argument(
        "--max-minutes", type=float, help="stop (and save) after this much training time"
    )


def _eval_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage", required=True, choices=["sr256", "sr1024"])
    parser.add_argument("--data", required=True, help="folder of ground-truth images")
    parser.add_argument("--checkpoint", help="model to evaluate (default: the stage's default)")
    parser.add_argument(
        "--color-fix",
        default="none",
        choices=["none", "adain", "wavelet"],
        help="colour-correct the model's output against its input before scoring",
    )
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="dpmpp_2m")
    parser.add_argument(
        "--fidelity",
        type=float,
        help="0 (full sample) .. 1 (most faithful); default: the stage's default. Fidelity 1 "
        "is always scored too",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--limit", type=int, help="evaluate at most N images")
    parser.add_argument("--out", default="runs/eval")
    parser.add_argument(
        "--crop", type=int, help="evaluate center crops of this size (default: stage output size)"
    )
    parser.add_argument(
        "--hold-out",
        type=int,
        default=0,
        help="evaluate only the last N images (sorted by path), those "
        "`cascade train --hold-out N` left out",
    )
    parser.add_argument("--device", default="cpu")


def main(argv: Sequence[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        args.run(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(2) from error


if __name__ == "__main__":
    main()
