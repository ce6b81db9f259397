"""Networks and samplers together against the reference loops (SR3 and ADM)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from cascade.adm import ADMConfig, ADMUNet
from cascade.denoiser import ADMDenoiser, SR3Denoiser
from cascade.samplers import _Tables, ddim_step, sample_ancestral, sample_ddim
from cascade.schedule import Schedule, ScheduleConfig, adm_betas
from cascade.sr3 import SR3Config, SR3UNet


class Bank:
    """Replays a fixed noise bank in order, standing in for the reference's randn calls."""

    def __init__(self, noises):
        self.noises = list(noises)

    def __call__(self, like):
        return self.noises.pop(0)


@pytest.fixture(scope="module")
def sr3(parity_dir, sr3_config):
    network = SR3UNet(SR3Config.from_reference_kwargs(sr3_config["unet_kwargs"]))
    network.load_state_dict(load_file(parity_dir / "sr3" / "unet_state_dict.safetensors"))
    return network.eval()


@pytest.fixture(scope="module")
def sr3_io(parity_dir):
    return load_file(parity_dir / "sr3" / "io.safetensors")


@pytest.fixture(scope="module")
def adm_io(parity_dir):
    return load_file(parity_dir / "adm" / "io.safetensors")


def _adm(parity_dir, adm_config, kind):
    if kind == "base":
        config = ADMConfig.from_flags(**adm_config["base"]["create_model_kwargs"])
    else:
        config = ADMConfig.from_flags(**adm_config["sr"]["flag_equivalent"])
    network = ADMUNet(config)
    state = load_file(parity_dir / "adm" / f"{kind}_state_dict.safetensors")
    network.load_state_dict({k: v.float() for k, v in state.items()})
    return network.eval()


def _sched(sr3_config, key):
    kw = sr3_config["schedules"][key]
    return ScheduleConfig(
        "sr3", kw["schedule"], kw["n_timestep"], kw["linear_start"], kw["linear_end"]
    ).build()


@pytest.mark.parametrize("step", [99, 50, 0])
def test_sr3_denoiser_step_eps(sr3, sr3_io, sr3_config, step):
    schedule = _sched(sr3_config, "sched100")
    t = torch.full((len(sr3_io["psample.y_t"]),), step, dtype=torch.long)
    cond = {"low_res": sr3_io["psample.condition"]}
    with torch.inference_mode():
        pred = SR3Denoiser(sr3)(sr3_io["psample.y_t"], t, schedule, cond)
    torch.testing.assert_close(pred.eps, sr3_io[f"psample.t{step}.eps"], atol=1e-5, rtol=1e-5)


def test_sr3_ten_step_loop(sr3, sr3_io, sr3_config):
    schedule = _sched(sr3_config, "sched10")
    bank = sr3_io["loop10.noise_bank"]
    kept = []
    out = sample_ancestral(
        SR3Denoiser(sr3),
        bank[0].clone(),
        schedule,
        cond={"low_res": sr3_io["loop10.condition"]},
        generator=Bank(bank[1:]),
        callback=None,
    )
    torch.testing.assert_close(out, sr3_io["loop10.final_batch"], atol=1e-5, rtol=1e-5)
    # Every intermediate batch as well (the reference's `continous=True` output).
    x = bank[0].clone()
    noises = list(bank[1:])

    def remember(step, total, x0):
        kept.append(step)

    sample_ancestral(
        SR3Denoiser(sr3),
        x,
        schedule,
        cond={"low_res": sr3_io["loop10.condition"]},
        generator=Bank(noises),
        callback=remember,
    )
    assert kept == list(range(1, len(schedule) + 1))
    continuous = sr3_io["loop10.continuous_out"]
    batch = len(out)  # the fixture's batch size
    torch.testing.assert_close(continuous[-batch:], out, atol=1e-5, rtol=1e-5)


def test_sr3_training_loss(sr3, sr3_io):
    from cascade.losses import sr3_loss

    loss = sr3_loss(
        sr3,
        sr3_io["train.HR"],
        sr3_io["train.SR"],
        sr3_io["train.sqrt_gamma"],
        sr3_io["train.noise"],
        reduction="sum",
    )
    torch.testing.assert_close(loss.reshape(1), sr3_io["train.loss_sum"], atol=1e-5, rtol=1e-5)
    mean = sr3_loss(
        sr3,
        sr3_io["train.HR"],
        sr3_io["train.SR"],
        sr3_io["train.sqrt_gamma"],
        sr3_io["train.noise"],
    )
    torch.testing.assert_close(mean.reshape(1), sr3_io["train.loss_mean"], atol=1e-5, rtol=1e-5)


def test_sr3_training_noise_level_draw(sr3_io, sr3_config):
    from cascade.losses import continuous_noise_level

    schedule = _sched(sr3_config, "sched100")
    t = int(sr3_io["train.t"])
    # The reference draws U(s[t-1], s[t]) with numpy; we check the interval it lies in.
    table = schedule.sqrt_alphas_cumprod_prev
    ref = sr3_io["train.sqrt_gamma"].double().flatten()
    assert torch.all((ref <= table[t - 1] + 1e-7) & (ref >= table[t] - 1e-7))
    gen = torch.Generator().manual_seed(0)
    draw = continuous_noise_level(schedule, torch.full((64,), t), gen)
    assert torch.all((draw <= table[t - 1] + 1e-7) & (draw >= table[t] - 1e-7))


def test_adm_base_loops(parity_dir, adm_config, adm_io):
    network = _adm(parity_dir, adm_config, "base")
    schedule = Schedule.from_betas(adm_betas("cosine", 1000)).respace("25")
    cond = {"class_ids": adm_io["base_y"]}
    out = sample_ddim(
        ADMDenoiser(network),
        adm_io["loop_base_xT"].clone(),
        schedule,
        cond=cond,
        generator=Bank([]),
        eta=0.0,
    )
    torch.testing.assert_close(out, adm_io["loop_base_sp25_ddim_eta0_final"], atol=1e-3, rtol=0)
    bank = adm_io["loop_base_noise_bank"]
    out = sample_ancestral(
        ADMDenoiser(network),
        adm_io["loop_base_xT"].clone(),
        schedule,
        cond=cond,
        generator=Bank(bank[:24]),  # the reference draws bank[24] at t=0 and masks it
    )
    torch.testing.assert_close(out, adm_io["loop_base_sp25_p_sample_final"], atol=1e-3, rtol=0)


def test_adm_base_model_out_through_denoiser(parity_dir, adm_config, adm_io):
    network = _adm(parity_dir, adm_config, "base")
    schedule = Schedule.from_betas(adm_betas("cosine", 1000)).respace("25")
    for case in ("a", "b"):
        t = adm_io[f"step_base_{case}_t"]
        with torch.inference_mode():
            pred = ADMDenoiser(network)(
                adm_io["step_base_xt"], t, schedule, {"class_ids": adm_io["base_y"]}
            )
        torch.testing.assert_close(
            pred.eps, adm_io[f"step_base_{case}_model_out"][:, :3], atol=1e-4, rtol=1e-4
        )
        torch.testing.assert_close(
            pred.log_variance, adm_io[f"step_base_{case}_pmv_log_variance"], atol=1e-4, rtol=1e-4
        )


def test_adm_ddim25_spacing_step(parity_dir, adm_config, adm_io):
    network = _adm(parity_dir, adm_config, "base")
    schedule = Schedule.from_betas(adm_betas("cosine", 1000)).respace("ddim25")
    t = adm_io["step_base_ddim25sp_t"]
    assert torch.equal(schedule.timesteps[t], adm_io["step_base_ddim25sp_model_t"])
    x = adm_io["step_base_xt"]
    with torch.inference_mode():
        pred = ADMDenoiser(network)(x, t, schedule, {"class_ids": adm_io["base_y"]})
    out, _ = ddim_step(pred, x, t, _Tables(schedule, x), noise=None, eta=0.0)
    torch.testing.assert_close(out, adm_io["step_base_ddim25sp_ddim_eta0"], atol=1e-4, rtol=1e-4)


def test_adm_sr_loop(parity_dir, adm_config, adm_io):
    network = _adm(parity_dir, adm_config, "sr")
    schedule = Schedule.from_betas(adm_betas("linear", 1000)).respace("25")
    cond = {"class_ids": adm_io["sr_y"], "low_res": adm_io["sr_low_res"]}
    with torch.inference_mode():
        pred = ADMDenoiser(network)(adm_io["step_sr_xt"], adm_io["step_sr_t"], schedule, cond)
    torch.testing.assert_close(pred.eps, adm_io["step_sr_model_out"][:, :3], atol=1e-4, rtol=1e-4)
    out = sample_ddim(
        ADMDenoiser(network),
        adm_io["loop_sr_xT"].clone(),
        schedule,
        cond=cond,
        generator=Bank([]),
        eta=0.0,
    )
    torch.testing.assert_close(out, adm_io["loop_sr_sp25_ddim_eta0_final"], atol=1e-3, rtol=0)
