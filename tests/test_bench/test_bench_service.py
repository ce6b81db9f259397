"""`cascade bench` end to end at its smallest: every section runs (embedded Redis, the API and
worker processes included) and the JSON carries the names runs are compared by."""

from __future__ import annotations

import copy
import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.main import BenchConfig, keep_earlier, run
from bench.quality import upscale_time_to_quality
from bench.report import KEEP_MARKER, write_reports
from cascade.checkpoints import model_from_preset
from cascade.samplers import student_timesteps
from cascade.stages import DEFAULT_FIDELITY, STUDENT_STEPS

pytestmark = pytest.mark.service

MINIMAL = BenchConfig(
    mode="test",
    forward_cases=(("sr256-tiny", 64),),
    forward_repeats=1,
    sampler_steps=(2, 3),
    reference_steps=4,
    sampler_images=1,
    sampler_crop=64,
    service_steps=(2, 1),
    service_repeats=1,
    throughput_jobs=4,
    throughput_steps=1,
    max_batch=4,
    tiling_sizes=(256,),
    tiling_steps=1,
    ttq_images=1,
    ttq_crop=64,
    ttq_reference_steps=6,
    ttq_sr1024_size=64,
    scaling_batches=(1, 2),
    scaling_threads=(1,),
    tiny=True,
)


def number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@pytest.fixture
def one_thread() -> Iterator[None]:
    """One CPU thread here and in the workers (the bench hands its count on), so a busy
    machine does not stall torch's thread team."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_minimal_run_has_every_figure(tmp_path: Path, one_thread: None):
    photos = tmp_path / "photos"
    photos.mkdir()
    pixels = np.random.default_rng(0).integers(0, 255, (80, 96, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(photos / "photo.png")
    results = run(MINIMAL, "cpu", data=str(photos), command="cascade bench --test")

    assert results["machine"]["cores"] >= 1 and results["machine"]["cpu"]
    assert results["command"] == "cascade bench --test" and results["comparable"] is False
    forward = results["forward"]["sr256-tiny"]
    assert number(forward["speedup"]) and number(forward["vs_reference"])
    assert forward["vs_reference"] == forward["reference_ms"] / forward["fast_ms"]
    assert number(forward["variants_ms"]["channels_last"])
    assert set(results["samplers"]) == {"ancestral", "ddpm", "ddim", "dpmpp_2m"}
    for entry in results["samplers"].values():
        within = entry["steps_within_0.1db"]
        assert within is None or within in (2, 3)
        # Its own limit (3 steps) is always within 0.1 dB of itself.
        assert entry["steps_within_0.1db_of_own_limit"] in (2, 3)
        assert all(number(value) for value in entry["psnr"].values())
    ttq = results["time_to_quality"]
    for kind in ("upscale", "generate256"):
        entry = ttq[kind]
        assert entry["speedup"] == entry["reference"]["seconds"] / entry["default"]["seconds"]
        assert len(entry["per_item"]["reference"]["seconds"]) == 1
    # The default's fidelity, not full sampling; beside it the same sampler at fidelity 0.
    assert ttq["upscale"]["default_run"]["fidelity"] == DEFAULT_FIDELITY["sr256"]
    full = ttq["upscale"]["full_sample"]
    assert ttq["upscale"]["default_run"]["low_band"] == "estimate"
    assert full["run"] == {**ttq["upscale"]["default_run"], "fidelity": 0.0, "low_band": "sample"}
    assert full["speedup"] == ttq["upscale"]["reference"]["seconds"] / full["seconds"]
    assert full["hf_ratio_gap"] == full["hf_ratio"] - ttq["upscale"]["reference"]["hf_ratio"]
    assert len(ttq["upscale"]["per_item"]["full_sample"]["psnr"]) == 1
    assert ttq["upscale"]["reference_run"] == {
        "sampler": "ancestral",
        "steps": 6,
        "eta": 0.0,
        "guidance": 1.0,
        "color_fix": "none",
        "fidelity": 0.0,
        "low_band": "sample",  # the reference's sample as is
    }
    # Network calls counted: the reference's one per step; the default's estimate and steps.
    assert ttq["upscale"]["reference"]["network_calls"] == 6
    default_calls = 1 + ttq["upscale"]["default_run"]["steps"]
    assert ttq["upscale"]["default"]["network_calls"] == default_calls
    assert ttq["upscale"]["call_ratio"] == 6 / default_calls
    big = ttq["upscale1024"]
    assert big["size"] == 64 and big["default"]["network_calls"] == 4
    assert big["twenty_steps"]["network_calls"] == 21
    assert big["speedup"] == big["twenty_steps"]["seconds"] / big["default"]["seconds"]
    assert number(ttq["upscale"]["psnr_gap_db"]) and number(
        ttq["generate256"]["detail_vs_reference"]
    )
    scaling = results["throughput"]["per_item_forward_ms"]["threads_1"]
    assert scaling["gain"] == scaling["1"] / scaling["2"]
    service = results["service"]
    for key in ("overhead_ratio", "overhead_fraction", "e2e_s", "direct_s"):
        assert number(service[key]), key
    assert service["e2e_s"] > 0 and service["direct_s"] > 0
    assert service["same_image"] is True  # the service ran exactly the direct call's request
    # The job's own stage times split the end-to-end time: both stages ran, inside it.
    assert len(service["stage_runs_s"]) == len(service["e2e_runs_s"])
    for total, inside in zip(service["e2e_runs_s"], service["stage_runs_s"], strict=True):
        assert 0 < inside < total
    assert service["service_fraction"] == service["service_s"] / service["e2e_s"]
    rates = results["throughput"]["jobs_per_s"]
    assert set(rates) == {"workers1_batch1", "workers2_batch1", "workers1_batchN"}
    assert all(number(rate) and rate > 0 for rate in rates.values())
    assert number(results["throughput"]["batching_speedup"])
    previews = results["previews"]
    assert previews["previews_per_stage"] == 4 and previews["same_image"] is True
    for name, steps in (("base64", 2), ("sr256", 1)):  # fewer steps than 4: one on each
        entry = previews["stages"][name]
        assert entry["previews"] == [steps] * 3 and 0 < entry["preview_chars"] <= 16 * 1024
        assert 0 < entry["log_chars"] <= steps * entry["preview_chars"]
        assert len(entry["on_runs_s"]) == len(entry["off_runs_s"]) == 3
        assert entry["on_s"] == sorted(entry["on_runs_s"])[1]  # the median of 3
        assert entry["off_s"] == sorted(entry["off_runs_s"])[1] > 0
        assert entry["ratio"] == entry["on_s"] / entry["off_s"]
        assert entry["best_ratio"] == min(entry["on_runs_s"]) / min(entry["off_runs_s"])
        # One preview made alone: its share of the stage is what `steps` of them take.
        assert 0 < entry["preview_ms"] < 1000 * entry["on_s"]
        share = steps * entry["preview_ms"] / 1000 / entry["off_s"]
        assert entry["preview_share"] == pytest.approx(share)
    assert previews["ratio"] == previews["on_s"] / previews["off_s"]
    memory = results["tiling"]["memory"]["256"]
    assert number(memory["peak_rss_mb"]) and memory["rss_ratio"] == 1.0
    seam = results["tiling"]["seams"]
    assert number(seam["psnr_between"])
    assert seam["border_excess"] == seam["border_ratio_tiled"] / seam["border_ratio_untiled"]
    assert 0 < seam["border_ratio_photo"] < 10

    path = tmp_path / "bench.json"
    path.write_text(json.dumps(results))
    partial = run(MINIMAL, "cpu", sections=("forward",), command="cascade bench --only forward")
    combined = keep_earlier(partial, path)  # the sections not run again are carried over
    assert combined["service"] == results["service"] and "date" in combined["setup"]["tiling"]

    report = tmp_path / "BENCHMARKS.md"
    report.write_text(f"# old run\n\n{KEEP_MARKER}\n\n## Hand-written: load run\n")
    write_reports(combined, [results], tmp_path / "bench.png", report)
    text = report.read_text()
    assert "# old run" not in text
    assert text.endswith(f"{KEEP_MARKER}\n\n## Hand-written: load run\n")
    assert text.count("## CPU:") == 2 and "not comparable" in text
    assert "overhead fraction" in text and "![benchmark plot](bench.png)" in text
    assert "Time to quality" in text and "vs reference" in text and "| full_sample |" in text
    assert "| the photo |" in text and "Tiled over one window at the border lines" in text
    assert "### Live previews" in text and "| stage | off s | on s | on / off |" in text
    assert (tmp_path / "bench.png").stat().st_size > 0 and (tmp_path / "bench.md").is_file()


def test_report_only_writes_the_out_folder_not_the_repository_report(tmp_path: Path):
    from cascade.cli import main

    repository = Path(__file__).resolve().parents[2]
    repository_report = repository / "BENCHMARKS.md"
    before = repository_report.read_text()
    run_file = repository / "bench.json"  # the last CPU run, as `cascade bench` wrote it
    out = tmp_path / "out"
    main(["bench", "--report-only", "--json", str(run_file), "--out", str(out)])
    assert (out / "bench.png").is_file() and (out / "bench.md").is_file()
    assert repository_report.read_text() == before
    named = tmp_path / "REPORT.md"
    main(
        [
            "bench",
            "--report-only",
            "--json",
            str(run_file),
            "--out",
            str(out),
            "--report",
            str(named),
        ]
    )
    assert named.is_file()


def test_report_names_the_repository_weights_by_their_path_in_it():
    from bench.main import shown
    from cascade.pipeline import DEFAULT_WEIGHTS, DEMO_WEIGHTS

    assert shown(str(DEMO_WEIGHTS / "sr256.safetensors")) == "weights/demo/sr256.safetensors"
    assert shown(DEFAULT_WEIGHTS["sr256"]) == DEFAULT_WEIGHTS["sr256"]
    assert shown("/elsewhere/sr256.safetensors") == "/elsewhere/sr256.safetensors"


def test_report_command_carries_no_path_of_this_machine():
    from bench.main import shown_command

    argv = ["bench", "--out", "runs/cpu", "--only", "samplers", "--data", "/srv/photos/holdout"]
    assert shown_command(argv) == "cascade bench --out runs/cpu --only samplers --data PHOTOS"
    argv = ["bench", "--data=/srv/photos", "--merge", "gpu.json", "--out", "/tmp/bench"]
    assert shown_command(argv) == "cascade bench --data=PHOTOS --merge JSON --out PATH"
    argv = ["bench", "--report", "BENCHMARKS.md", "--json=/tmp/run.json", "--quick"]
    assert shown_command(argv) == "cascade bench --report BENCHMARKS.md --json=JSON --quick"


def test_time_to_quality_times_a_students_one_call_mode(one_thread: None):
    teacher = model_from_preset("sr256-tiny")
    schedule = teacher.spec.schedule.build()
    # Distilled at the stage's default fidelity, as `cascade distill` does (a student serves
    # only that fidelity).
    restart = round((1 - DEFAULT_FIDELITY["sr256"]) * (len(schedule) - 1))
    few_step = tuple(student_timesteps(schedule, n, restart) for n in STUDENT_STEPS)
    spec = dataclasses.replace(teacher.spec, few_step=few_step)
    student = dataclasses.replace(teacher, spec=spec, network=copy.deepcopy(teacher.network))
    photo = torch.rand(1, 3, 64, 64) * 2 - 1
    result = upscale_time_to_quality(teacher, [photo], reference_steps=6, student=student)
    one = result["one_step"]
    assert one["network_calls"] == 1 and one["call_ratio"] == 6.0
    assert one["run"]["sampler"] == "student" and one["run"]["steps"] == 1
    assert one["speedup"] == result["reference"]["seconds"] / one["seconds"]
