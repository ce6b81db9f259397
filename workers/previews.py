"""Live previews: a small WebP of the sampler's current clean estimate x0, carried by a
stage's progress events `CASCADE_PREVIEWS_PER_STAGE` times per stage.

The steps are spread evenly over the stage (`due`), the last one included, so the page shows
the image forming and then the stage's own output. A tiled stage counts the steps of all its
tiles, and its preview is the current tile's estimate: the other tiles are not sampled yet, or
already blended into bands, so assembling the whole image would cost a full-size copy per
preview. The encode is this module's own (`encode_preview`), apart from the stage's outputs.
"""

from __future__ import annotations

import base64
import io
import math

import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

PREVIEW_SIDE = 128  # the longer side at most, in pixels (smaller images keep their size)
PREVIEW_QUALITIES = (60, 35)  # WebP quality, then a lower one should the first pass the cap
PREVIEW_MAX_CHARS = 16 * 1024  # the data URL's length at most (base64 of ~12 KB of WebP)
MEDIA_TYPE = "image/webp"


def due(step: int, total: int, count: int) -> bool:
    """Whether step `step` (1..total) of a stage carries one of its `count` previews: the
    steps where ceil(k * total / count) falls, k = 1..count (every step when count >= total)."""
    if count <= 0 or total <= 0 or not 1 <= step <= total:
        return False
    return step * count // total > (step - 1) * count // total


def thumbnails(x0: Tensor) -> Tensor:
    """Each item of `x0` ([B, 3, H, W], about [-1, 1]) as uint8 RGB on the CPU
    ([B, H', W', 3]), area-averaged down to at most PREVIEW_SIDE on its longer side."""
    height, width = x0.shape[-2:]
    factor = math.ceil(max(height, width) / PREVIEW_SIDE)
    x = torch.nan_to_num(x0.detach().float(), nan=0.0).clamp(-1, 1)
    if factor > 1:  # an integer factor: every output pixel averages a whole block
        x = F.avg_pool2d(x, factor, ceil_mode=True)
    x = ((x + 1) * 127.5).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu()


def encode_preview(pixels: Tensor) -> str | None:
    """One thumbnail ([H, W, 3] uint8) as a `data:image/webp;base64,` URL within
    PREVIEW_MAX_CHARS; None should even the lower quality not fit (noise-like images)."""
    image = Image.fromarray(pixels.numpy(), "RGB")
    for quality in PREVIEW_QUALITIES:
        buffer = io.BytesIO()
        image.save(buffer, "WEBP", quality=quality, method=0)  # method 0: the fastest encode
        url = f"data:{MEDIA_TYPE};base64,{base64.b64encode(buffer.getvalue()).decode()}"
        if len(url) <= PREVIEW_MAX_CHARS:
            return url
    return None


def previews(job_ids: list[str], x0: Tensor) -> dict[str, str]:
    """Each job's preview of its item of the batch's estimate `x0` (in `job_ids`' order)."""
    found = {}
    for job_id, pixels in zip(job_ids, thumbnails(x0), strict=True):
        if (url := encode_preview(pixels)) is not None:
            found[job_id] = url
    return found
