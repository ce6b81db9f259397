"""Cross-request batching against a real (embedded) Redis: the API in-process (TestClient), an
RQ `StageWorker` in-process in burst mode, tiny random-weight presets on the CPU."""

from __future__ import annotations

import io
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from rq.job import Job, JobStatus
from rq.queue import Queue
from rq.serializers import JSONSerializer
from torch import Tensor

from api.main import create_app
from cascade.pipeline import Stage
from cascade.stages import SAMPLER_NAMES, StageRun
from jobs.connection import EmbeddedRedis
from jobs.queues import stage_queue
from jobs.record import JobRecord
from jobs.settings import Settings
from workers import runtime as runtime_module
from workers.batching import claim
from workers.runtime import Runtime
from workers.worker import StageWorker, build_worker

with warnings.catch_warnings():  # starlette nudges towards httpx2, which is not installed here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.service

TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}
STAGES = ["base64", "sr256"]


@dataclass
class Call:
    """One `Stage.run` call: the stage, its items' seeds and its output."""

    stage: str
    seeds: list[int]
    images: Tensor | None = None


@dataclass
class Harness:
    settings: Settings
    runtime: Runtime
    http: TestClient
    calls: list[Call] = field(default_factory=list)

    def submit(self, **body: object) -> str:
        response = self.http.post("/v1/generations", json={"size": 64, **body})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def upscale(self, width: int, height: int, seed: int) -> str:
        files = {"file": ("in.png", png(width, height))}
        response = self.http.post(
            "/v1/upscales", data={"scale": "4", "seed": str(seed)}, files=files
        )
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def work(self, max_batch: int) -> None:
        settings = self.settings.model_copy(update={"max_batch": max_batch})
        build_worker(settings, STAGES, self.runtime.connection).work(burst=True)

    def record(self, job_id: str) -> JobRecord:
        record = self.runtime.jobs.get(job_id)
        assert record is not None
        return record

    def batches(self, stage: str) -> list[int]:
        """The sizes of the finished `Stage.run` calls of `stage`, in order."""
        return [
            len(call.seeds)
            for call in self.calls
            if call.stage == stage and call.images is not None
        ]

    def images(self, stage: str) -> dict[int, Tensor]:
        """Each finished item's image by its job's seed (`Stage.run` derives the stage's)."""
        return {
            seed: call.images[index]
            for call in self.calls
            if call.stage == stage and call.images is not None
            for index, seed in enumerate(call.seeds)
        }


def png(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(width * height).integers(0, 255, (height, width, 3), np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def counted(stage: Stage, calls: list[Call]) -> Callable[..., Tensor]:
    run = stage.run

    def counting(**kwargs: object) -> Tensor:
        call = Call(stage.name, list(kwargs["seeds"]))  # type: ignore[call-overload]
        calls.append(call)
        call.images = run(**kwargs)
        return call.images

    return counting


@pytest.fixture
def harness(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[Harness]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    redis_server.client().flushdb()
    settings = Settings(
        redis_url=redis_server.url,
        store=str(tmp_path),
        steps_base64=3,
        steps_sr256=2,
        **TINY,
    )
    runtime = Runtime(settings, redis_server.client())
    runtime_module.install(runtime)
    calls: list[Call] = []
    for name in STAGES:
        stage = runtime.stage(name)
        stage.run = counted(stage, calls)  # type: ignore[method-assign]
    with TestClient(create_app(settings)) as http:
        yield Harness(settings, runtime, http, calls)
    runtime_module.install(None)  # type: ignore[arg-type]
    torch.set_num_threads(threads)


def decoded(harness: Harness, job_id: str) -> np.ndarray:
    response = harness.http.get(f"/v1/jobs/{job_id}/result")
    assert response.status_code == 200, response.text
    return np.asarray(Image.open(io.BytesIO(response.content)), dtype=np.int16)


REQUESTS = [
    {"class_id": 1, "seed": 10, "size": 256},
    {"class_id": 2, "seed": 11, "size": 256},
    {"class_id": 3, "seed": 12, "size": 256},
    {"class_id": 1, "seed": 13, "size": 256},
]


def test_waiting_jobs_run_as_one_batch_and_images_do_not_change(harness: Harness):
    batched = [harness.submit(**body) for body in REQUESTS]
    harness.work(max_batch=4)
    assert harness.batches("base64") == [4] and harness.batches("sr256") == [4]
    for job_id in batched:
        record = harness.record(job_id)
        assert record.status == "succeeded"
        assert record.stage("base64", "batch") == "4" and record.stage("sr256", "batch") == "4"
    together = {stage: harness.images(stage) for stage in STAGES}
    harness.calls.clear()

    alone = [harness.submit(**body) for body in REQUESTS]
    harness.work(max_batch=1)
    assert harness.batches("base64") == [1] * 4 and harness.batches("sr256") == [1] * 4
    assert all(harness.record(job_id).stage("sr256", "batch") == "1" for job_id in alone)
    for stage in STAGES:
        separate = harness.images(stage)
        assert separate.keys() == together[stage].keys()
        for seed, image in separate.items():
            torch.testing.assert_close(together[stage][seed], image, atol=1e-3, rtol=0)
    first = together["sr256"][10]
    assert (first - together["sr256"][11]).abs().max() > 0.1  # own seeds
    for one, other in zip(batched, alone, strict=True):
        assert np.abs(decoded(harness, one) - decoded(harness, other)).max() <= 1  # 8-bit rounding


def test_an_item_matches_a_direct_stage_run(harness: Harness):
    job_ids = [harness.submit(class_id=5, seed=seed) for seed in (1, 2, 3)]
    harness.work(max_batch=3)
    assert harness.batches("base64") == [3]
    stage = harness.runtime.stage("base64")
    direct = stage.run(seeds=[2], class_ids=[5], run=StageRun("dpmpp_2m", 3))
    batched = harness.images("base64")[2]
    torch.testing.assert_close(batched, direct[0], atol=1e-5, rtol=0)
    assert all(harness.record(job_id).status == "succeeded" for job_id in job_ids)


def test_only_jobs_with_the_same_settings_share_a_batch(harness: Harness):
    other_sampler = next(n for n in SAMPLER_NAMES if n != harness.settings.sampler_base64)
    same = [harness.submit(class_id=1, seed=1), harness.submit(class_id=2, seed=2)]
    others = [
        harness.submit(class_id=1, seed=3, steps=4),
        harness.submit(class_id=1, seed=4, sampler=other_sampler),
        harness.submit(class_id=1, seed=5, guidance=2.0),
    ]
    small = [harness.upscale(64, 64, seed=6), harness.upscale(64, 64, seed=7)]
    other_size = harness.upscale(48, 48, seed=8)
    harness.work(max_batch=8)
    assert sorted(harness.batches("base64")) == [1, 1, 1, 2]
    assert sorted(harness.batches("sr256")) == [1, 2]
    for job_id, size in [*((j, "2") for j in same + small), *((j, "1") for j in others)]:
        record = harness.record(job_id)
        assert record.status == "succeeded", record.fields
        stage = record.plan[0].name
        assert record.stage(stage, "batch") == size, (job_id, record.fields)
    assert harness.record(other_size).stage("sr256", "batch") == "1"


def test_a_canceled_waiting_job_is_left_out(harness: Harness):
    first, second, third, fourth = (harness.submit(class_id=1, seed=seed) for seed in range(4))
    response = harness.http.delete(f"/v1/jobs/{second}")  # off the queue, as before batching
    assert response.status_code == 202, response.text
    # A cancel racing the claim: the record says canceled, the stage job still waits.
    assert harness.runtime.jobs.end(fourth, "canceled")
    harness.work(max_batch=4)
    assert harness.batches("base64") == [2]
    for job_id in (first, third):
        record = harness.record(job_id)
        assert record.status == "succeeded" and record.stage("base64", "batch") == "2"
    for job_id in (second, fourth):
        record = harness.record(job_id)
        assert record.status == "canceled" and record.stage("base64", "status") == "canceled"
        assert record.stage("base64", "step") is None  # never sampled
    assert harness.record(second).stage("base64", "attempts") == "0"


def test_a_job_canceled_mid_batch_stops_and_the_rest_run_again(harness: Harness):
    job_ids = [harness.submit(class_id=1, seed=seed, steps=4) for seed in range(3)]
    victim = job_ids[1]
    stage = harness.runtime.stage("base64")
    run = stage.run
    started: list[int] = []

    def cancel_during_first_call(**kwargs: object) -> Tensor:
        started.append(len(kwargs["seeds"]))  # type: ignore[arg-type]
        check = kwargs["callback"]

        def callback(step: int, total: int, x0: Tensor) -> None:
            if len(started) == 1 and step == 2:
                assert harness.http.delete(f"/v1/jobs/{victim}").status_code == 202
            check(step, total, x0)  # type: ignore[operator]

        return run(**{**kwargs, "callback": callback})

    stage.run = cancel_during_first_call  # type: ignore[method-assign]
    harness.work(max_batch=4)
    assert started == [3, 2]  # stopped at the cancel, then the other two again
    record = harness.record(victim)
    assert record.status == "canceled" and record.stage("base64", "status") == "canceled"
    # Stopped within a step of the cancel; its steps stop counting at the cancel (step 2's
    # report came after it), so the view it ended with does not move afterwards.
    assert record.stage("base64", "step") == "1"
    for job_id in (job_ids[0], job_ids[2]):
        record = harness.record(job_id)
        assert record.status == "succeeded" and record.stage("base64", "batch") == "2"
        assert record.stage("base64", "attempts") == "1"
    assert harness.http.get(f"/v1/jobs/{victim}/result").status_code == 409


def test_claimed_jobs_of_a_dead_worker_are_retried(harness: Harness):
    job_ids = [harness.submit(class_id=1, seed=seed) for seed in range(3)]
    connection = harness.runtime.connection
    queue = stage_queue(connection, "base64")
    worker = build_worker(harness.settings, STAGES, connection)
    assert isinstance(worker, StageWorker)
    worker.register_birth()
    lead, _ = Queue.dequeue_any([queue], None, connection=connection, serializer=JSONSerializer)
    worker.prepare_job_execution(lead)
    worker.prepare_execution(lead)
    claimed = claim(worker, queue, lead, harness.runtime, 4)
    assert [member.args[0] for member, _ in claimed] == job_ids[1:]
    assert queue.job_ids == []
    registry = queue.started_job_registry
    assert sorted(registry.get_job_ids()) == sorted(
        job.id for job in [lead, *(m for m, _ in claimed)]
    )
    for member, _ in claimed:
        assert Job.fetch(member.id, connection, serializer=JSONSerializer).get_status() == (
            JobStatus.STARTED
        )
    # The worker dies here: no heartbeat comes, and a maintenance pass finds the jobs abandoned.
    registry.cleanup(timestamp=time.time() + 3600)
    assert sorted(queue.job_ids) == sorted(f"{job_id}-base64" for job_id in job_ids)
    record = harness.record(job_ids[1])
    assert record.stage("base64", "status") == "queued"
    assert "the worker running it stopped" in (record.stage("base64", "error") or "")
    worker.register_death()
    harness.work(max_batch=4)
    assert harness.batches("base64") == [3]
    assert all(harness.record(job_id).status == "succeeded" for job_id in job_ids)
