"""CUDA paths (skipped without a GPU): the fast path gives the CPU's images."""

from __future__ import annotations

import pytest
import torch

from cascade.checkpoints import load
from cascade.pipeline import Stage
from cascade.stages import StageRun

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("precision", ["float32", "bfloat16"])
def test_cuda_stage_matches_cpu(precision):
    settings = StageRun("ddim", 4)
    low_res = torch.rand(2, 3, 16, 16) * 2 - 1
    cpu = Stage("sr256", load("preset:sr256-tiny"), settings).run(seeds=[1, 2], low_res=low_res)
    stage = Stage("sr256", load("preset:sr256-tiny", "cuda"), settings, precision=precision)
    gpu = stage.optimize().run(seeds=[1, 2], low_res=low_res.cuda()).cpu()
    # CUDA generators draw other numbers than CPU ones, so compare statistics, not pixels.
    assert gpu.shape == cpu.shape == (2, 3, 64, 64)
    assert torch.isfinite(gpu).all()
    again = stage.run(seeds=[1, 2], low_res=low_res.cuda()).cpu()
    torch.testing.assert_close(gpu, again, atol=1e-2 if precision == "bfloat16" else 1e-4, rtol=0)


def test_cuda_parity_forward(parity_dir, sr3_config):
    from safetensors.torch import load_file

    from cascade.sr3 import SR3Config, SR3UNet

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    network = SR3UNet(SR3Config.from_reference_kwargs(sr3_config["unet_kwargs"]))
    network.load_state_dict(load_file(parity_dir / "sr3" / "unet_state_dict.safetensors"))
    io = load_file(parity_dir / "sr3" / "io.safetensors")
    with torch.inference_mode():
        out = network.cuda().eval()(io["unet.x"].cuda(), io["unet.noise_level"].cuda())
    torch.testing.assert_close(out.cpu(), io["unet.out"], atol=1e-4, rtol=1e-4)
