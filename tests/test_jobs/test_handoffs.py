"""Hand-offs between stages: small ones are Redis values, large ones go to the result store
with Redis holding only a reference; fenced and freed the same way either side."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from cascade.stages import StageRun
from jobs.connection import EmbeddedRedis
from jobs.lifecycle import HANDOFF_REFERENCE, Jobs
from jobs.plan import PlannedStage
from jobs.record import NewJob, tensor_key
from jobs.settings import Settings
from jobs.store import LocalStore

LIMIT = 1000
MODEL = {"model": "tiny"}


@pytest.fixture
def redis(redis_server: EmbeddedRedis) -> Iterator[EmbeddedRedis]:
    redis_server.client().flushdb()
    yield redis_server


def make_jobs(redis: EmbeddedRedis, root: Path) -> Jobs:
    settings = Settings(redis_url=redis.url, store=str(root), handoff_inline_bytes=LIMIT)
    return Jobs(redis.client(), 60, settings=settings, store=LocalStore(root))


def new_job(jobs: Jobs, job_id: str) -> str:
    plan = [
        PlannedStage("base64", 64, 64, StageRun("ddim", 4)),
        PlannedStage("sr256", 256, 256, StageRun("ddim", 4)),
    ]
    jobs.create(NewJob(job_id, "generation", {"class_id": 1}, 7, plan, (256, 256)))
    return job_id


def test_the_threshold_decides_where_a_hand_off_lives(redis: EmbeddedRedis, tmp_path: Path):
    jobs = make_jobs(redis, tmp_path)
    job_id = new_job(jobs, "a" * 32)
    small, large = b"s" * LIMIT, bytes(range(256)) * 20  # at the limit; 5120 bytes, above it
    assert jobs.put_tensor(job_id, "base64", small, 60)
    assert jobs.put_tensor(job_id, "sr256", large, 60)
    client = redis.client()
    assert client.get(tensor_key(job_id, "base64")) == small
    reference = client.get(tensor_key(job_id, "sr256"))
    assert reference.startswith(HANDOFF_REFERENCE) and len(reference) < 100
    assert (tmp_path / job_id / "sr256.tensor").read_bytes() == large
    assert not (tmp_path / job_id / "base64.tensor").exists()
    assert jobs.get_tensor(job_id, "base64") == small
    assert jobs.get_tensor(job_id, "sr256") == large
    # Freed together: the Redis keys and the store's copy.
    jobs.drop_tensors(job_id, ["input", "base64", "sr256"])
    assert client.get(tensor_key(job_id, "sr256")) is None
    assert not (tmp_path / job_id / "sr256.tensor").exists()
    assert jobs.get_tensor(job_id, "sr256") is None


def test_an_upload_above_the_threshold_is_stored_before_its_record(
    redis: EmbeddedRedis, tmp_path: Path
):
    jobs = make_jobs(redis, tmp_path)
    job_id = "b" * 32
    data = b"\x01" * (LIMIT + 1)
    assert jobs.put_tensor(job_id, "input", data, 60)  # the API stores it, then makes the record
    assert jobs.get_tensor(job_id, "input") == data
    assert (tmp_path / job_id / "input.tensor").is_file()


def test_a_superseded_attempt_stores_no_large_hand_off(redis: EmbeddedRedis, tmp_path: Path):
    first, second = make_jobs(redis, tmp_path), make_jobs(redis, tmp_path)
    job_id = new_job(first, "c" * 32)
    assert first.stage_started(job_id, "base64", MODEL, "worker-a") == 1
    assert second.stage_retrying(job_id, "base64", "the worker running it stopped")
    assert second.stage_started(job_id, "base64", MODEL, "worker-b") == 2
    assert not first.put_tensor(job_id, "base64", b"x" * 5000, 60)
    assert not (tmp_path / job_id / "base64.tensor").exists()
    assert redis.client().get(tensor_key(job_id, "base64")) is None
    assert second.put_tensor(job_id, "base64", b"y" * 5000, 60)
    assert first.get_tensor(job_id, "base64") == b"y" * 5000


def test_the_end_of_a_job_deletes_its_stored_hand_offs(redis: EmbeddedRedis, tmp_path: Path):
    jobs = make_jobs(redis, tmp_path)
    job_id = new_job(jobs, "d" * 32)
    assert jobs.stage_started(job_id, "base64", MODEL, "worker-a") == 1
    assert jobs.put_tensor(job_id, "base64", b"z" * 5000, 60)
    assert jobs.end(job_id, "canceled", "canceled by the client")
    assert not (tmp_path / job_id / "base64.tensor").exists()
    assert redis.client().get(tensor_key(job_id, "base64")) is None
