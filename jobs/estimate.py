"""A quote for a planned job, before it is queued: its stages, their cost in sampler steps x
output pixels, and seconds from what the workers measured.

Run seconds: the stage's cost times its measured seconds per unit of cost (`jobs.stats`, each
job's share of its batch). Queue wait: the jobs waiting in the stage's queue now, times the
measured seconds one job holds a worker, over the workers serving the stage. Stages run one
after another, so a later stage's queue may be longer or shorter by the time the job reaches
it. Where no run of a stage has been measured yet, or no worker serves it, its seconds are
None and a note says why: a quote never invents a number.

Memory (`memory_mb`): a measured model of a stage job's peak memory, its process included.
"""

from __future__ import annotations

from redis import Redis
from rq import Worker

from cascade.stages import STAGE_OUTPUT
from jobs.plan import PlannedStage
from jobs.queues import stage_queue
from jobs.stats import read_stage

# Peak memory of a stage job: the process with its models (PROCESS_MB), one window's sampling at
# most the network's native size (WINDOW_MB, scaled by the window's pixels below it), and the
# worker's own copy of the output (one float32 RGB image, 12 bytes a pixel) with the band
# buffers of a tiled upscale and its PNG encoding (BYTES_PER_OUTPUT_PIXEL). Tiles run one after
# another, so a larger output adds only its own copy. From `cascade bench --only tiling
# --tiling-steps 1` with the demo weights on a CPU (BENCHMARKS.md): ~260 MB with the three
# models loaded; peak 458 MB at 256 px (sr256), 1232 MB at 1024 px (sr1024); the command line,
# which streams its PNG, grows by ~5 bytes a pixel from 1024 to 8192 px. base64's window is
# not measured (64 px: small beside the process).
PROCESS_MB = 300
WINDOW_MB = {"base64": 50, "sr256": 200, "sr1024": 1000}
BYTES_PER_OUTPUT_PIXEL = 16


def memory_mb(planned: PlannedStage) -> int:
    """The estimated peak memory (MB) of one stage job of `planned`'s output size."""
    pixels = planned.height * planned.width
    native = STAGE_OUTPUT.get(planned.name, max(planned.height, planned.width)) ** 2
    window = WINDOW_MB.get(planned.name, max(WINDOW_MB.values())) * min(1.0, pixels / native)
    return round(PROCESS_MB + window + BYTES_PER_OUTPUT_PIXEL * pixels / 2**20)


def quote_stages(connection: Redis, plan: list[PlannedStage]) -> dict[str, object]:
    """Per-stage cost, queue depth, workers and estimated seconds; totals; notes."""
    stages: list[dict[str, object]] = []
    notes: list[str] = []
    for planned in plan:
        queue = stage_queue(connection, planned.name)
        depth, workers = queue.count, len(Worker.all(queue=queue))
        stats = read_stage(connection, planned.name)
        rate, per_job = stats.seconds_per_work, stats.seconds_per_run
        run_seconds = None if rate is None else round(rate * planned.cost, 1)
        wait_seconds = None
        if rate is None:
            notes.append(
                f"stage {planned.name} has no measured run yet: its seconds are unknown until "
                "a job has run it"
            )
        if workers == 0:
            notes.append(f"no worker serves stage {planned.name} now: the job would wait for one")
        elif depth == 0:
            wait_seconds = 0.0
        elif per_job is not None:
            wait_seconds = round(depth * per_job / workers, 1)
        stages.append(
            {
                "name": planned.name,
                "height": planned.height,
                "width": planned.width,
                "sampler": planned.run.sampler,
                "steps": planned.run.steps,
                "cost": planned.cost,
                "queue_depth": depth,
                "workers": workers,
                "measured_runs": stats.work_runs,
                "seconds_per_megapixel_step": None if rate is None else round(rate * 1e6, 4),
                "wait_seconds": wait_seconds,
                "run_seconds": run_seconds,
                "memory_mb": memory_mb(planned),
            }
        )
    run = _total([stage["run_seconds"] for stage in stages])
    wait = _total([stage["wait_seconds"] for stage in stages])
    return {
        "stages": stages,
        "cost": sum(planned.cost for planned in plan),
        "wait_seconds": wait,
        "run_seconds": run,
        "total_seconds": None if run is None or wait is None else round(run + wait, 1),
        # Stages run one after another, each in its own stage job: the job needs the largest.
        "memory_mb": max(int(stage["memory_mb"]) for stage in stages),  # type: ignore[call-overload]
        "notes": notes,
    }


def _total(values: list[object]) -> float | None:
    """The sum, or None when any part is unknown."""
    if any(value is None for value in values):
        return None
    return round(sum(float(value) for value in values), 1)  # type: ignore[arg-type]
