"""What live previews cost a stage: one 256 px generation's stages run as a worker runs them
(the stage job in this process, on an embedded Redis and a local result store), with previews
on (`CASCADE_PREVIEWS_PER_STAGE`, the service's default) and off, alternated, the same seeds.

- `stages.<stage>`: `off_s` and `on_s`, the median seconds of the stage job (`run_stage`: the
  input read, sampling with its progress events, the outputs saved) each way; `ratio` = on /
  off (the target is <= 1.03); `best_ratio`, the fastest runs' on / off (other work on a shared
  machine slows some runs by a third: the fastest are the least disturbed).
- `previews`: how many of the stage's progress events carried one in each run with them on;
  `preview_chars`, the longest data URL; `log_chars`, all of a run's together (the median
  run), what they add to the job's event log.
- `preview_ms`: one preview made alone (`workers.previews.previews` on the stage's own output,
  on the device, the median of `ENCODES` calls); `preview_share` = previews x preview_ms /
  off_s, the work previews add as a share of the stage, free of the run-to-run spread.
- `ratio` and `best_ratio` at the top: the same for the two stages together (their sums).
- `same_image`: previews leave the result alone (each seed's images equal up to 8-bit rounding).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.service import SAMPLER, class_ids, same_pixels
from cascade.images import load_image
from jobs.connection import EmbeddedRedis
from jobs.plan import plan_generation
from jobs.record import NewJob
from jobs.settings import Settings
from jobs.store import object_name, result_name, stage_preview
from workers import runtime as runtime_module
from workers.previews import previews
from workers.runtime import Runtime
from workers.stage import run_stage

log = logging.getLogger(__name__)

PREVIEWS = Settings.model_fields["previews_per_stage"].default  # the service's default count
STAGES = ("base64", "sr256")
ENCODES = 20  # preview encodes timed per stage


def preview_cost(
    weights: dict[str, str], device: str, steps: tuple[int, int], repeats: int
) -> dict[str, object]:
    """Stage seconds of 256 px generations (`steps`: base64, sr256) with previews on vs off,
    `repeats` of each way in alternation after one warm-up job each way."""
    with tempfile.TemporaryDirectory(prefix="cascade-bench-previews-") as root:
        redis = EmbeddedRedis(Path(root) / "redis" / "bench.rdb")
        try:
            settings = Settings(
                redis_url=redis.url,
                store=str(Path(root) / "store"),
                device=device,
                previews_per_stage=PREVIEWS,
                steps_base64=steps[0],
                steps_sr256=steps[1],
                **{f"weights_{name}": weights[name] for name in STAGES},
            )
            return _measure(settings, redis, weights["base64"], repeats)
        finally:
            runtime_module.install(None)  # type: ignore[arg-type]
            redis.stop()


def _measure(
    settings: Settings, redis: EmbeddedRedis, base: str, repeats: int
) -> dict[str, object]:
    with_previews = Runtime(settings, redis.client())
    without = Runtime(settings.model_copy(update={"previews_per_stage": 0}), redis.client())
    for name in STAGES:
        with_previews.stage(name)
    without.stages = with_previews.stages  # one copy of each model, loaded once
    ways = {"on": with_previews, "off": without}
    class_id = class_ids(base)[0]

    def job(runtime: Runtime, seed: int, steps: int | None = None) -> tuple[list[float], str]:
        """One generation's stage jobs in order: each one's seconds, and the job's id."""
        plan = plan_generation(runtime.settings, 256, sampler=SAMPLER, steps=steps)
        request = {"class_id": class_id, "size": 256}
        new = NewJob(uuid.uuid4().hex, "generation", request, seed, plan.stages, plan.output)
        runtime.jobs.create(new)
        runtime_module.install(runtime)
        seconds = []
        for name in STAGES:
            started = time.perf_counter()
            run_stage(new.id, name)
            seconds.append(time.perf_counter() - started)  # the PNG written: synchronised
        status = runtime.jobs.get(new.id).status
        if status != "succeeded":
            raise RuntimeError(f"a previews benchmark job ended {status}; see the log")
        return seconds, new.id

    for runtime in ways.values():  # first calls allocate and pick kernels
        job(runtime, seed=0, steps=1)
    runs: dict[str, list[list[float]]] = {"on": [], "off": []}
    shown: dict[str, list[int]] = {name: [] for name in STAGES}
    longest = dict.fromkeys(STAGES, 0)
    logged: dict[str, list[int]] = {name: [] for name in STAGES}
    same = True
    last_on = ""
    for repeat in range(repeats):
        seed = 1000 + repeat
        order = ("on", "off") if repeat % 2 == 0 else ("off", "on")
        results = {}
        for way in order:
            seconds, job_id = job(ways[way], seed)
            runs[way].append(seconds)
            results[way] = with_previews.store.get(object_name(job_id, result_name()))
            if way == "on":
                last_on = job_id
                for name in STAGES:
                    urls = _previews(with_previews, job_id, name)
                    shown[name].append(len(urls))
                    longest[name] = max([longest[name], *map(len, urls)])
                    logged[name].append(sum(map(len, urls)))
        same = same and None not in results.values() and same_pixels(*results.values())
        log.info("previews: on %s s, off %s s", runs["on"][-1], runs["off"][-1])
    stages = {}
    for index, name in enumerate(STAGES):
        on = statistics.median(seconds[index] for seconds in runs["on"])
        off = statistics.median(seconds[index] for seconds in runs["off"])
        made = _preview_seconds(with_previews, last_on, name)
        stages[name] = {
            "on_s": on,
            "off_s": off,
            "ratio": on / off,
            "best_ratio": min(seconds[index] for seconds in runs["on"])
            / min(seconds[index] for seconds in runs["off"]),
            "previews": shown[name],
            "preview_chars": longest[name],
            "log_chars": statistics.median(logged[name]),
            "preview_ms": made * 1000,
            "preview_share": max(shown[name]) * made / off,
            "on_runs_s": [seconds[index] for seconds in runs["on"]],
            "off_runs_s": [seconds[index] for seconds in runs["off"]],
        }
    on_total = statistics.median(sum(seconds) for seconds in runs["on"])
    off_total = statistics.median(sum(seconds) for seconds in runs["off"])
    return {
        "previews_per_stage": PREVIEWS,
        "stages": stages,
        "on_s": on_total,
        "off_s": off_total,
        "ratio": on_total / off_total,
        "best_ratio": min(map(sum, runs["on"])) / min(map(sum, runs["off"])),
        "same_image": same,
    }


def _preview_seconds(runtime: Runtime, job_id: str, stage: str) -> float:
    """The median seconds of one preview of the stage's stored output, made as a stage makes
    it (from an estimate on the stage's device)."""
    stored = runtime.store.get(object_name(job_id, stage_preview(stage)))
    assert stored is not None, f"the {stage} stage's image is missing"
    x0 = load_image(stored).to(runtime.device)
    times = []
    for _ in range(ENCODES):
        started = time.perf_counter()
        previews([job_id], x0)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _previews(runtime: Runtime, job_id: str, stage: str) -> list[str]:
    """The live previews (data URLs) the stage's progress events carried, in order."""
    return [
        event.data["preview"]
        for event in runtime.jobs.events.read(job_id)
        if event.type == "progress" and event.data["stage"] == stage and "preview" in event.data
    ]
