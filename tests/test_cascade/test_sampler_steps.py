"""Single sampler steps against the SR3 and ADM references, fed the references' model outputs."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from cascade.denoiser import Prediction, learned_range
from cascade.samplers import _Tables, ancestral_step, ddim_step, predict_x0
from cascade.schedule import Schedule, ScheduleConfig, adm_betas

TOL = {"atol": 1e-5, "rtol": 1e-5}


@pytest.fixture(scope="module")
def sr3_io(parity_dir):
    return load_file(parity_dir / "sr3" / "io.safetensors")


@pytest.fixture(scope="module")
def adm_io(parity_dir):
    return load_file(parity_dir / "adm" / "io.safetensors")


@pytest.mark.parametrize("step", [99, 50, 0])
def test_sr3_reference_step(sr3_io, sr3_config, step):
    kw = sr3_config["schedules"]["sched100"]
    schedule = ScheduleConfig(
        "sr3", kw["schedule"], kw["n_timestep"], kw["linear_start"], kw["linear_end"]
    ).build()
    y_t = sr3_io["psample.y_t"]
    key = f"psample.t{step}"
    t = torch.full((len(y_t),), step, dtype=torch.long)  # the fixture's batch size
    # The wrapper's noise level is sqrt(alpha_bar_t) in float32, as the reference reads it.
    noise_level = schedule.sqrt_alphas_cumprod_prev[1:].to(torch.float32)[t].view(-1, 1)
    assert torch.equal(noise_level, sr3_io[f"{key}.noise_level"])
    tables = _Tables(schedule, y_t)
    pred = Prediction(eps=sr3_io[f"{key}.eps"])
    x0 = predict_x0(pred, y_t, t, tables, clip=True)
    torch.testing.assert_close(x0, sr3_io[f"{key}.x0_clamped"], **TOL)
    mean, _ = ancestral_step(pred, y_t, t, tables, noise=None)
    torch.testing.assert_close(mean, sr3_io[f"{key}.model_mean"], **TOL)
    noise = sr3_io["psample.z"] if step > 0 else None
    out, _ = ancestral_step(pred, y_t, t, tables, noise=noise)
    torch.testing.assert_close(out, sr3_io[f"{key}.out"], **TOL)
    torch.testing.assert_close(
        schedule.sr3_buffers()["posterior_log_variance_clipped"][step : step + 1],
        sr3_io[f"{key}.model_log_variance"],
        **TOL,
    )


def _adm_case(adm_io, prefix, schedule_name, spacing):
    schedule = Schedule.from_betas(adm_betas(schedule_name, 1000)).respace(spacing)
    t = adm_io[f"{prefix}_t"]
    assert torch.equal(schedule.timesteps[t], adm_io[f"{prefix}_model_t"])
    return schedule, t


def _learned(out: torch.Tensor, x: torch.Tensor, t: torch.Tensor, schedule: Schedule) -> Prediction:
    # Same interpolation as ADMDenoiser, isolated from the network.
    eps, v = out[:, :3], out[:, 3:]

    def gather(values: torch.Tensor) -> torch.Tensor:  # float64 table at t, cast like ADM
        return values[t].to(x.dtype).view(-1, 1, 1, 1)

    min_log = gather(schedule.posterior_log_variance_clipped)
    max_log = gather(torch.log(schedule.betas))
    return Prediction(eps=eps, log_variance=learned_range(v, min_log, max_log))


@pytest.mark.parametrize(
    "prefix,xt,noise,name",
    [
        ("step_base_a", "step_base_xt", "step_base_noise", "cosine"),
        ("step_base_b", "step_base_xt", "step_base_noise", "cosine"),
        ("step_sr", "step_sr_xt", "step_sr_noise", "linear"),
    ],
)
def test_adm_steps(adm_io, prefix, xt, noise, name):
    schedule, t = _adm_case(adm_io, prefix, name, "25")
    x, z = adm_io[xt], adm_io[noise]
    pred = _learned(adm_io[f"{prefix}_model_out"], x, t, schedule)
    tol = {"atol": 1e-4, "rtol": 1e-4}
    torch.testing.assert_close(pred.log_variance, adm_io[f"{prefix}_pmv_log_variance"], **tol)
    tables = _Tables(schedule, x)
    mean, x0 = ancestral_step(pred, x, t, tables, noise=None)
    torch.testing.assert_close(x0, adm_io[f"{prefix}_pmv_pred_xstart"], **tol)
    torch.testing.assert_close(mean, adm_io[f"{prefix}_pmv_mean"], **tol)
    out, _ = ancestral_step(pred, x, t, tables, noise=z)
    torch.testing.assert_close(out, adm_io[f"{prefix}_p_sample"], **tol)
    out, _ = ddim_step(pred, x, t, tables, noise=z, eta=0.0)
    torch.testing.assert_close(out, adm_io[f"{prefix}_ddim_eta0"], **tol)
    if prefix != "step_sr":
        out, _ = ddim_step(pred, x, t, tables, noise=z, eta=1.0)
        atol = 5e-4 if prefix == "step_base_a" else 1e-4
        torch.testing.assert_close(out, adm_io[f"{prefix}_ddim_eta1"], atol=atol, rtol=1e-4)
