"""The benchmark report's throughput section: where batching cannot pay (the measured per-item
gain is below the target), the report says so with the measured figure."""

from __future__ import annotations

from bench.report import BATCHING_TARGET, _throughput


def throughput(gains: dict[str, float]) -> dict:
    return {
        "jobs_per_s": {"workers1_batch1": 2.35, "workers1_batchN": 2.57},
        "batching_speedup": 1.09,
        "workers_speedup": 1.27,
        "per_item_forward_ms": {
            name: {"1": 58.4, "8": round(58.4 / gain, 1), "gain": gain}
            for name, gain in gains.items()
        },
    }


def test_a_cpu_bound_machine_has_its_batching_target_retired_with_the_evidence():
    text = _throughput(throughput({"threads_1": 1.07, "threads_2": 1.23}), {"max_batch": 8})
    assert f"cannot reach a {BATCHING_TARGET}× speedup" in text
    assert "at most 1.23× less per item" in text


def test_a_machine_where_batching_pays_keeps_the_target():
    text = _throughput(throughput({"threads_1": 3.4}), {"max_batch": 8})
    assert "| threads 1 | 58.4 | 17.2 | 3.4 |" in text
    assert "cannot reach" not in text
