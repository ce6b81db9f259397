"""What live previews cost a stage: one 256 px generation's stages run as a worker runs them
(the stage job in this process, on an embedded Redis and a local result store), with previews
on (`CASCADE_PREVIEWS_PER_STAGE`, the service's default) and off, alternated, the same seeds.

- `stages.<stage>`: `off_s` and `on_s`, the median seconds of the stage job (`run_stage`: the
  input read, sampling with its progress events, the outputs saved) each way, and `ratio` =
  on / off (the target is <= 1.03); `previews`, how many of the stage's progress events carried
  one in each run with them on, and `preview_chars`, the longest such data URL.
- `ratio`: the same for the two stages together (the medians of their sums).
- `same_image`: previews leave the result alone (each seed's images equal up to 8-bit rounding).
"""

from __future__ import annotations

import logging
import statistics
import tempfile
import time
import uuid
from pathlib import Path

from bench.service import SAMPLER, _same_pixels, class_ids
from jobs.connection import EmbeddedRedis
from jobs.plan import plan_generation
from jobs.record import NewJob
from jobs.settings import Settings
from jobs.store import object_name, result_name
from workers import runtime as runtime_module
from workers.runtime import Runtime
from workers.stage import run_stage

log = logging.getLogger(__name__)

PREVIEWS = Settings.model_fields["previews_per_stage"].default  # the service's default count
STAGES = ("base64", "sr256")


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
    same = True
    for repeat in range(repeats):
        seed = 1000 + repeat
        order = ("on", "off") if repeat % 2 == 0 else ("off", "on")
        results = {}
        for way in order:
            seconds, job_id = job(ways[way], seed)
            runs[way].append(seconds)
            results[way] = with_previews.store.get(object_name(job_id, result_name()))
            if way == "on":
                for name in STAGES:
                    urls = _previews(with_previews, job_id, name)
                    shown[name].append(len(urls))
                    longest[name] = max([longest[name], *map(len, urls)])
        same = same and None not in results.values() and _same_pixels(*results.values())
        log.info("previews: on %s s, off %s s", runs["on"][-1], runs["off"][-1])
    stages = {}
    for index, name in enumerate(STAGES):
        on = statistics.median(seconds[index] for seconds in runs["on"])
        off = statistics.median(seconds[index] for seconds in runs["off"])
        stages[name] = {
            "on_s": on,
            "off_s": off,
            "ratio": on / off,
            "previews": shown[name],
            "preview_chars": longest[name],
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
        "same_image": same,
    }


def _previews(runtime: Runtime, job_id: str, stage: str) -> list[str]:
    """The live previews (data URLs) the stage's progress events carried, in order."""
    return [
        event.data["preview"]
        for event in runtime.jobs.events.read(job_id)
        if event.type == "progress" and event.data["stage"] == stage and "preview" in event.data
    ]
