"""A worker refuses a stage whose estimated memory is more than it has: the job fails with a
message naming both, the worker carries on (in-process, a real embedded Redis, tiny models)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from cascade.images import tensor_to_bytes
from cascade.stages import StageRun
from jobs.connection import EmbeddedRedis
from jobs.estimate import memory_mb
from jobs.plan import PlannedStage
from jobs.record import NewJob
from jobs.settings import Settings
from workers import runtime as runtime_module
from workers.memory import worker_memory_mb
from workers.runtime import Runtime
from workers.stage import run_stage

TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}


def runtime_with(redis_server: EmbeddedRedis, tmp_path: Path, megabytes: int) -> Runtime:
    settings = Settings(
        redis_url=redis_server.url, store=str(tmp_path), worker_memory_mb=megabytes, **TINY
    )
    runtime = Runtime(settings, redis_server.client())
    runtime_module.install(runtime)
    return runtime


@pytest.fixture(autouse=True)
def _clean(redis_server: EmbeddedRedis) -> Iterator[None]:
    redis_server.client().flushdb()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    runtime_module.install(None)  # type: ignore[arg-type]
    torch.set_num_threads(threads)


def upscale_job(runtime: Runtime, name: str, side: int) -> tuple[str, PlannedStage]:
    """A 4x upscale of a `side` px upload by sr256, queued as the API would."""
    planned = PlannedStage("sr256", side * 4, side * 4, StageRun("ddim", 1))
    job = NewJob(name, "upscale", {"scale": 4}, 5, [planned], (side * 4, side * 4))  # type: ignore[arg-type]
    runtime.jobs.create(job)
    upload = torch.randint(0, 256, (1, 3, side, side), dtype=torch.uint8)  # decoded once
    runtime.jobs.put_tensor(job.id, "input", tensor_to_bytes(upload), 600)
    return job.id, planned


def test_a_stage_needing_more_memory_than_the_worker_has_fails_the_job_clearly(
    redis_server: EmbeddedRedis, tmp_path: Path
):
    small = PlannedStage("sr256", 256, 256, StageRun("ddim", 1))
    runtime = runtime_with(redis_server, tmp_path, memory_mb(small))  # room for 256 px only
    big_id, big = upscale_job(runtime, "big", 96)  # 384 px: more than the worker has
    assert memory_mb(big) > memory_mb(small)
    run_stage(big_id, "sr256")  # returns: the refusal is the job's outcome, not a crash
    record = runtime.jobs.get(big_id)
    assert record.status == "failed"
    error = record.fields["error"]
    assert error.startswith("stage sr256 failed: a 384x384 output")
    assert f"needs about {memory_mb(big)} MB" in error
    assert f"this worker has {memory_mb(small)} MB" in error
    # The same worker runs the job that fits, from a uint8 upload.
    small_id, _ = upscale_job(runtime, "small", 64)
    run_stage(small_id, "sr256")
    assert runtime.jobs.get(small_id).status == "succeeded"


def test_worker_memory_defaults_to_what_the_machine_has_available() -> None:
    import psutil

    have = worker_memory_mb(Settings(worker_memory_mb=0))
    available = psutil.virtual_memory().available / 2**20
    assert available * 0.5 < have < psutil.virtual_memory().total / 2**20 + 1
    assert worker_memory_mb(Settings(worker_memory_mb=1234)) == 1234
