"""Schedules against the SR3 and ADM reference tables."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from cascade.schedule import (
    SR3_BUFFER_NAMES,
    Schedule,
    ScheduleConfig,
    adm_betas,
    space_timesteps,
    sr3_betas,
)


@pytest.fixture(scope="module")
def sr3_io(parity_dir):
    return load_file(parity_dir / "sr3" / "io.safetensors")


@pytest.fixture(scope="module")
def adm_io(parity_dir):
    return load_file(parity_dir / "adm" / "io.safetensors")


@pytest.mark.parametrize(
    "name", ["linear", "quad", "warmup10", "warmup50", "const", "jsd", "cosine"]
)
def test_sr3_beta_schedules(sr3_io, sr3_config, name):
    kw = sr3_config["schedules"]["betas64_types"]
    betas = sr3_betas(name, kw["n_timestep"], kw["linear_start"], kw["linear_end"], kw["cosine_s"])
    torch.testing.assert_close(betas, sr3_io[f"betas64.{name}"], atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("key", ["sched100", "sched2000", "sched10"])
def test_sr3_buffers(sr3_io, sr3_config, key):
    kw = sr3_config["schedules"][key]
    config = ScheduleConfig(
        "sr3", kw["schedule"], kw["n_timestep"], kw["linear_start"], kw["linear_end"]
    )
    schedule = config.build()
    buffers = schedule.sr3_buffers()
    assert tuple(buffers) == SR3_BUFFER_NAMES
    for name, value in buffers.items():
        torch.testing.assert_close(value, sr3_io[f"{key}.{name}"], rtol=1e-6, atol=0)
    # The noise-level table is float64 and must be exact.
    assert torch.equal(schedule.sqrt_alphas_cumprod_prev, sr3_io[f"{key}.sqrt_alphas_cumprod_prev"])


def test_adm_betas(adm_io):
    for name in ("cosine", "linear"):
        torch.testing.assert_close(
            adm_betas(name, 1000), adm_io[f"{name}1000_betas"], atol=1e-12, rtol=0
        )


@pytest.mark.parametrize("name,spacing", [("cosine", "25"), ("cosine", "ddim25"), ("linear", "25")])
def test_adm_respacing(adm_io, name, spacing):
    key = f"{name}1000_{'ddim25' if spacing.startswith('ddim') else 'sp25'}"
    schedule = Schedule.from_betas(adm_betas(name, 1000)).respace(spacing)
    assert torch.equal(schedule.timesteps, adm_io[f"{key}_timestep_map"])
    for field in (
        "betas",
        "alphas_cumprod",
        "posterior_variance",
        "posterior_log_variance_clipped",
    ):
        torch.testing.assert_close(
            getattr(schedule, field), adm_io[f"{key}_{field}"], atol=1e-12, rtol=1e-9
        )


def test_space_timesteps_shapes():
    assert space_timesteps(1000, "250")[:3] == [0, 4, 8] and space_timesteps(1000, "250")[-1] == 999
    assert space_timesteps(1000, "ddim50") == list(range(0, 1000, 20))
    assert space_timesteps(10, "5,5") == list(range(10))
    assert space_timesteps(100, "10,1") == [0, 5, 11, 16, 22, 27, 33, 38, 44, 49, 50]
    assert len(space_timesteps(2000, 7)) == 7
    with pytest.raises(ValueError, match="cannot take"):
        space_timesteps(10, "11")


def test_respacing_keeps_alpha_bar():
    schedule = ScheduleConfig("sr3", "linear", 2000).build()
    spaced = schedule.respace(20)
    assert len(spaced) == 20 and spaced.num_train_timesteps == 2000
    assert torch.equal(spaced.alphas_cumprod, schedule.alphas_cumprod[spaced.timesteps])
    # Respaced betas compose back to the same alpha_bar.
    torch.testing.assert_close(torch.cumprod(1 - spaced.betas, 0), spaced.alphas_cumprod)
