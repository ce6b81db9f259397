"""A quote for a planned job, before it is queued: its stages, their cost in sampler steps x
output pixels, and seconds from what the workers measured.

Run seconds: the stage's cost times its measured seconds per unit of cost (`jobs.stats`, each
job's share of its batch). Queue wait: the jobs waiting in the stage's queue now, times the
measured seconds one job holds a worker, over the workers serving the stage. Stages run one
after another, so a later stage's queue may be longer or shorter by the time the job reaches
it. Where no run of a stage has been measured yet, or no worker serves it, its seconds are
None and a note says why: a quote never invents a number.
"""

from __future__ import annotations

from redis import Redis
from rq import Worker

from jobs.plan import PlannedStage
from jobs.queues import stage_queue
from jobs.stats import read_stage


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
        "notes": notes,
    }


def _total(values: list[object]) -> float | None:
    """The sum, or None when any part is unknown."""
    if any(value is None for value in values):
        return None
    return round(sum(float(value) for value in values), 1)  # type: ignore[arg-type]
