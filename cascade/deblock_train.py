"""`cascade train-deblock`: train the JPEG pre-clean network (`cascade.deblock`) on photos.

The inputs the upscalers take are photos reduced by SR3's antialiased bicubic downsample (÷4,
and ÷8 for more variety of scale). Each photo is reduced once; every step takes random crops of
the reduced photos (flips and rotations), saves each as JPEG at a quality drawn uniformly from
`cascade.deblock.QUALITY_RANGE` with 4:2:0 chroma (`cascade.corruptions.jpeg`, what phones
and the web write), and fits the network's output to the crop before compression (L2, Adam,
cosine learning rate). `--max-minutes` stops early and `--resume` continues from the state file.
"""

from __future__ import annotations

import argparse
import logging
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from cascade.corruptions import jpeg
from cascade.datasets import find_images, read_image, to_float
from cascade.deblock import QUALITY_RANGE, DeblockConfig, Deblocker, parameter_count, save
from cascade.degradations import bicubic_degrade
from cascade.samplers import DIHEDRAL, dihedral

log = logging.getLogger(__name__)

SCALES = (4, 8)


def reduced_photos(folder: str | Path, scales=SCALES, min_side: int = 64) -> list[Tensor]:
    """Every photo under `folder` reduced by each of `scales` ([3, h, w] in [-1, 1]); reductions
    smaller than `min_side` are left out."""
    out = []
    for path in find_images(folder):
        image = read_image(path)
        if image is None:
            continue
        photo = to_float(image)[None]
        for scale in scales:
            h, w = (side // scale * scale for side in photo.shape[-2:])
            if min(h, w) // scale < min_side:
                continue
            out.append(bicubic_degrade(photo[..., :h, :w], scale)[0])
    if not out:
        raise ValueError(f"no photos of at least {min_side} px after reduction under {folder}")
    return out


def compress(clean: Tensor, quality: int) -> Tensor:
    """One [3, h, w] image in [-1, 1] as JPEG at `quality` (4:2:0), decoded back to [-1, 1]."""
    unit = clean.add(1.0).div(2.0).clamp(0.0, 1.0)[None]
    return jpeg(unit, quality)[0] * 2.0 - 1.0


def draw_batch(
    photos: list[Tensor], batch: int, crop: int, gen: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """(JPEG inputs, clean targets, qualities) for `batch` random crops."""
    inputs, targets, qualities = [], [], []
    for _ in range(batch):
        photo = photos[int(torch.randint(len(photos), (), generator=gen))]
        h, w = photo.shape[-2:]
        top = int(torch.randint(h - crop + 1, (), generator=gen))
        left = int(torch.randint(w - crop + 1, (), generator=gen))
        turns, flip = DIHEDRAL[int(torch.randint(len(DIHEDRAL), (), generator=gen))]
        target = dihedral(photo[None, :, top : top + crop, left : left + crop], turns, flip)[0]
        quality = int(torch.randint(QUALITY_RANGE[0], QUALITY_RANGE[1] + 1, (), generator=gen))
        inputs.append(compress(target, quality))
        targets.append(target)
        qualities.append(quality)
    return torch.stack(inputs), torch.stack(targets), torch.tensor(qualities, dtype=torch.float32)


def psnr_gain(network: Deblocker, batch: tuple[Tensor, Tensor, Tensor]) -> tuple[float, float]:
    """Mean PSNR (dB, [-1, 1] images) of the JPEG inputs and of the cleaned ones."""
    inputs, targets, qualities = batch
    with torch.no_grad():
        cleaned = network(inputs, qualities).clamp(-1, 1)

    def psnr(x: Tensor) -> float:
        mse = (x - targets).pow(2).mean(dim=(1, 2, 3)).clamp_min(1e-12)
        return float((10 * torch.log10(4.0 / mse)).mean())

    return psnr(inputs), psnr(cleaned)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="folder of training photos")
    parser.add_argument("--out", required=True, help="weights file to write (.safetensors)")
    parser.add_argument("--steps", type=int, default=3000)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--crop", type=int, default=64, help="crop side after reduction")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--width", type=int, default=DeblockConfig.width)
    parser.add_argument("--blocks", type=int, default=DeblockConfig.blocks)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-minutes", type=float, default=None)
    parser.add_argument("--resume", action="store_true", help="continue from OUT.state.pt")
    parser.add_argument("--log-every", type=int, default=100)


def main(args: argparse.Namespace) -> None:
    out = Path(args.out)
    state_path = out.with_suffix(".state.pt")
    network = Deblocker(DeblockConfig(args.width, args.blocks))
    optimizer = torch.optim.Adam(network.parameters(), lr=args.lr)
    step, seconds = 0, 0.0
    gen = torch.Generator().manual_seed(args.seed)
    if args.resume and state_path.exists():
        state = torch.load(state_path, weights_only=False)
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        step, seconds = state["step"], state["seconds"]
        gen.set_state(state["generator"])
        log.info("resumed at step %d", step)
    photos = reduced_photos(args.data)
    check = draw_batch(photos, 64, args.crop, torch.Generator().manual_seed(12345))
    log.info(
        "%d reduced photos, %d parameters; JPEG %.2f dB on the check crops",
        len(photos),
        parameter_count(network),
        psnr_gain(network, check)[0],
    )
    started = time.monotonic()

    def checkpoint() -> None:
        torch.save(
            {
                "network": network.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "seconds": seconds + time.monotonic() - started,
                "generator": gen.get_state(),
            },
            state_path,
        )
        before, after = psnr_gain(network, check)
        save(
            network,
            out,
            steps=step,
            batch_size=args.batch_size,
            crop=args.crop,
            scales=list(SCALES),
            train_seconds=round(seconds + time.monotonic() - started),
            check_psnr=[round(before, 3), round(after, 3)],
        )
        log.info("step %d: check crops %.2f -> %.2f dB; saved %s", step, before, after, out)

    while step < args.steps:
        if args.max_minutes is not None and time.monotonic() - started > 60 * args.max_minutes:
            log.info("--max-minutes reached")
            break
        lr = args.lr * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for group in optimizer.param_groups:
            group["lr"] = max(lr, args.lr * 0.01)
        inputs, targets, qualities = draw_batch(photos, args.batch_size, args.crop, gen)
        loss = F.mse_loss(network(inputs, qualities), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        if step % args.log_every == 0:
            log.info("step %d loss %.5f lr %.2e", step, loss.item(), lr)
        if step % (args.log_every * 5) == 0:
            checkpoint()
    checkpoint()
