"""`cascade train`: its arguments, and the loop that trains a stage from an image folder with
a time budget, periodic saves and sample grids, resumable from a saved state."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import time
from pathlib import Path

from cascade.checkpoints import read_spec
from cascade.degradations import DEGRADATIONS
from cascade.stages import PRECISIONS, STAGES
from cascade.training import TrainConfig, Trainer, load_data, load_state

log = logging.getLogger(__name__)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The run's settings from `cascade train` arguments."""
    init = getattr(args, "init", None) or ""
    return TrainConfig(
        stage=args.stage,
        preset=args.preset or init_preset(init) or f"{args.stage}-small",
        data=str(args.data),
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        loss=args.loss,
        degradation=args.degradation,
        ema=args.ema,
        label_dropout=args.label_dropout,
        max_aug_level=args.max_aug_level,
        crop=getattr(args, "crop", None),
        hold_out=args.hold_out,
        precision=args.precision,
        seed=args.seed,
        device=args.device,
        init=init,
    )


def init_preset(path: str) -> str | None:
    """The preset an `--init` checkpoint was trained as (its training metadata), if it says."""
    if not path:
        return None
    _, metadata = read_spec(path)
    return metadata.get("training.preset")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """`cascade train`'s arguments."""
    parser.add_argument("--stage", required=True, choices=STAGES)
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
    parser.add_argument(
        "--degradation",
        choices=list(DEGRADATIONS),
        default="bicubic",
        help="upscalers: how the low-res inputs are made from the crops (cascade.degradations; "
        "mixed is the fine-tuning mixture)",
    )
    parser.add_argument("--ema", type=float, default=0.999)
    parser.add_argument("--label-dropout", type=float, default=0.1)
    parser.add_argument("--max-aug-level", type=float, default=0.2)
    parser.add_argument("--sample-every", type=int, default=500)
    parser.add_argument("--save-every", type=int, default=500)
    parser.add_argument("--resume", help="training state file to resume from")
    parser.add_argument(
        "--init",
        metavar="CHECKPOINT",
        help="start a new run from this model's weights (network and EMA; fresh optimizer and "
        "warm-up); the preset defaults to the one it was trained as",
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32")
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


def main(args: argparse.Namespace) -> None:
    """`cascade train`: train a stage from an image folder, resumable, with sample grids."""
    from tqdm import tqdm

    out = Path(args.out)
    state = None
    if args.resume and getattr(args, "init", None):
        raise ValueError("--init starts a new run and --resume continues one: give only one")
    if args.resume:
        state = load_state(args.resume)
        saved = TrainConfig.from_json(state["config"])
        if saved.stage != args.stage:
            raise ValueError(f"{args.resume} trains {saved.stage}, not {args.stage}")
        config = dataclasses.replace(saved, data=str(args.data), device=args.device)
        log.info("resuming at step %d with the saved settings %s", state["step"], saved.to_json())
    else:
        config = config_from_args(args)
    data = load_data(config)
    if data.held_out:
        print(f"held out {len(data.held_out)} image(s) for evaluation:")
        for path in data.held_out:
            print(f"  {path}")
    if config.init and state is None:
        log.info("starting from the weights of %s", config.init)
    trainer = Trainer(config, data, state)
    samples = out / "samples"
    last_sample = -1
    with tqdm(total=args.steps, initial=trainer.step, unit="step", desc=config.stage) as bar:
        minutes = getattr(args, "max_minutes", None)
        deadline = time.monotonic() + 60 * minutes if minutes else None
        while trainer.step < args.steps:
            if deadline is not None and time.monotonic() > deadline:
                log.info("time budget of %s min reached at step %d", minutes, trainer.step)
                break
            loss = trainer.train_step(trainer.draw_batch())
            bar.set_postfix(loss=f"{loss:.4f}")
            bar.update(1)
            if args.save_every and trainer.step % args.save_every == 0:
                trainer.save(out)
            if args.sample_every and trainer.step % args.sample_every == 0:
                trainer.sample_grid(samples / f"step_{trainer.step}.png")
                last_sample = trainer.step
    path = trainer.save(out)
    if last_sample != trainer.step:
        trainer.sample_grid(samples / f"step_{trainer.step}.png")
    print(
        f"step {trainer.step}, loss {trainer.last_loss:.4f}: wrote {path}, {out / 'train_state.pt'}"
    )
