"""The forward variant matrix (`bench.gpu`) on the CPU with tiny presets: every cell measured,
errors against fp32 where they belong, the profile, the report, the time budget."""

from __future__ import annotations

import json

from bench.gpu import VARIANTS, report, run

CASES = (("base64-tiny", 32), ("sr256-tiny", 64))
CPU_VARIANTS = ("fp32", "tf32", "bf16_autocast", "bf16_weights", "channels_last")


def test_matrix_measures_each_variant_and_profiles(tmp_path):
    results = run(tmp_path, "cpu", CASES, (1, 2), CPU_VARIANTS, (), 1, 1, None)

    # tf32 and bf16 autocast are CUDA-only: the CPU run leaves them out.
    assert results["variants"] == ["fp32", "bf16_weights", "channels_last"]
    assert not any(v.cuda_only for v in VARIANTS if v.name in results["variants"])
    for preset, _ in CASES:
        assert set(results["matrix"][preset]) == {"1", "2"}
        for cell in results["matrix"][preset].values():
            assert set(cell) == set(results["variants"])
            for entry in cell.values():
                assert "error" not in entry, entry
                assert entry["ms"] > 0 and entry["tflops_per_s"] > 0 and entry["first_call_s"] > 0
                assert "mfu" not in entry  # no peak figure for a CPU
            # Same precision: the same numbers; bf16: close, and for SR3 not equal (a fresh
            # ADM network's output layer is zero-initialised, so its output is exactly zero).
            assert cell["fp32"]["max_abs_error"] == 0.0
            assert cell["channels_last"]["max_abs_error"] < 1e-4
            assert cell["bf16_weights"]["max_abs_error"] < 0.5
            if preset.startswith("sr"):
                assert cell["bf16_weights"]["max_abs_error"] > 0
        rows = results["profiles"][f"{preset}@1:fp32"]
        assert rows and all(row["ms"] >= 0 and 0 <= row["share"] <= 1 for row in rows)
        assert any("conv" in row["op"] for row in rows)  # convolutions lead a UNet's forward

    saved = json.loads((tmp_path / "gpu_matrix.json").read_text())
    assert saved["matrix"] == results["matrix"]
    markdown = (tmp_path / "gpu_matrix.md").read_text()
    assert markdown == report(results)
    assert "## base64-tiny" in markdown and "| bf16_weights |" in markdown
    assert "## Profile sr256-tiny@1:fp32" in markdown
    assert not any(key.endswith("bf16_autocast") for key in results["profiles"])


def test_matrix_stops_at_its_time_budget_with_what_it_has(tmp_path):
    results = run(tmp_path, "cpu", CASES, (1,), ("fp32",), (), 1, None, 0.0)
    assert results["stopped"] == "time budget reached"
    assert results["matrix"] == {}
    assert json.loads((tmp_path / "gpu_matrix.json").read_text())["stopped"]


def test_device_script_parses_and_its_options_are_the_matrix_cli():
    """bench/gpu.sh is valid bash, and what it passes to `python -m bench.gpu` parses to presets
    that exist and variants the matrix knows (a typo would cost a device run)."""
    import re
    import shlex
    import subprocess
    from pathlib import Path

    from bench.gpu import parser
    from cascade.presets import get_preset

    script = Path(__file__).resolve().parents[2] / "bench" / "gpu.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    text = script.read_text().replace("\\\n", " ")
    call = re.search(r"-m bench\.gpu (.*?) 2>&1", text)
    assert call, "gpu.sh no longer runs the matrix"
    args = parser().parse_args(shlex.split(call[1]))
    assert args.device == "cuda" and args.max_minutes and args.max_minutes <= 6
    for case in args.presets.split(","):
        name, size = case.split("@")
        assert get_preset(name) and int(size) > 0
    assert set(args.variants.split(",")) <= {v.name for v in VARIANTS}
    assert "cascade.cli bench --device cuda" in text
