"""Stage leases against a real (embedded) Redis: two workers' job records on one job, the first
attempt's stage handed to a second one; the first then writes nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from cascade.stages import StageRun
from jobs.connection import EmbeddedRedis
from jobs.lifecycle import Jobs
from jobs.plan import PlannedStage
from jobs.record import NewJob, job_key, tensor_key
from jobs.view import ORPHANED, mark_orphaned

MODEL = {"model": "tiny"}


@pytest.fixture
def redis(redis_server: EmbeddedRedis) -> Iterator[EmbeddedRedis]:
    redis_server.client().flushdb()
    yield redis_server


def new_job(jobs: Jobs, job_id: str = "j1") -> str:
    plan = [
        PlannedStage("base64", 64, 64, StageRun("ddim", 4)),
        PlannedStage("sr256", 256, 256, StageRun("ddim", 4)),
    ]
    jobs.create(NewJob(job_id, "generation", {"class_id": 1}, 7, plan, (256, 256)))
    return job_id


def test_an_attempt_taken_over_writes_nothing(redis: EmbeddedRedis):
    first, second = Jobs(redis.client(), 60), Jobs(redis.client(), 60)  # two workers
    job_id = new_job(first)
    assert first.stage_started(job_id, "base64", MODEL, "worker-a") == 1
    assert first.progress([job_id], "base64", 2, 4) == []
    # worker-a hangs past the heartbeat TTL; the stage is retried on worker-b.
    assert second.stage_retrying(job_id, "base64", "the worker running it stopped")
    assert second.stage_started(job_id, "base64", MODEL, "worker-b") == 2
    assert second.progress([job_id], "base64", 1, 4) == []
    before = first.get(job_id).fields
    # worker-a resumes: every write it tries is refused, and its next step tells it to stop.
    assert first.superseded(job_id, "base64") and not second.superseded(job_id, "base64")
    assert first.progress([job_id], "base64", 3, 4) == [job_id]
    assert not first.put_tensor(job_id, "base64", b"stale", 60)
    assert not first.stage_ended(job_id, "base64", "succeeded")
    assert not first.stage_ended(job_id, "base64", "canceled")
    assert not first.stage_retrying(job_id, "base64", "RuntimeError")
    assert first.get(job_id).fields == before
    assert redis.client().get(tensor_key(job_id, "base64")) is None
    # worker-b's writes go through; its progress moved on from its own step 1.
    assert second.put_tensor(job_id, "base64", b"fresh", 60)
    assert second.stage_ended(job_id, "base64", "succeeded")
    record = second.get(job_id)
    assert record.stage("base64", "status") == "succeeded"
    assert record.stage("base64", "step") == "1" and record.stage("base64", "worker") == "worker-b"
    assert record.stage("base64", "attempts") == "2"
    assert redis.client().get(tensor_key(job_id, "base64")) == b"fresh"
    events = [event.type for event in second.events.read(job_id) if event.type != "progress"]
    assert events == [
        "queued",
        *("stage_started", "stage_retrying"),
        *("stage_started", "stage_finished"),
    ]


def test_a_stage_starts_only_while_it_can_run(redis: EmbeddedRedis):
    jobs = Jobs(redis.client(), 60)
    job_id = new_job(jobs)
    assert jobs.stage_started(job_id, "base64", MODEL, "w1") == 1
    assert jobs.stage_ended(job_id, "base64", "succeeded")
    assert jobs.stage_started(job_id, "base64", MODEL, "w2") == 0  # a late duplicate delivery
    assert jobs.get(job_id).stage("base64", "attempts") == "1"
    assert jobs.get(job_id).stage("base64", "worker") == "w1"
    assert jobs.end(job_id, "canceled")
    assert jobs.stage_started(job_id, "sr256", MODEL, "w1") == 0
    assert jobs.get(job_id).stage("sr256", "attempts") == "0"
    assert jobs.stage_started("no-such-job", "base64", MODEL, "w1") == 0
    assert not redis.client().exists(job_key("no-such-job"))


def test_progress_of_a_canceled_job_tells_its_worker_to_stop(redis: EmbeddedRedis):
    jobs = Jobs(redis.client(), 60)
    job_id = new_job(jobs)
    jobs.stage_started(job_id, "base64", MODEL, "w1")
    assert jobs.progress([job_id], "base64", 1, 4) == []
    assert jobs.end(job_id, "canceled")
    assert jobs.get(job_id).stage("base64", "status") == "canceled"  # ended with the job
    assert jobs.progress([job_id], "base64", 2, 4) == [job_id]
    assert jobs.get(job_id).stage("base64", "step") == "1"  # frozen as the job ended
    assert not jobs.stage_ended(job_id, "base64", "succeeded")  # too late: the job has ended
    assert jobs.get(job_id).stage("base64", "status") == "canceled"
    assert jobs.progress(["no-such-job"], "base64", 1, 4) == ["no-such-job"]
    assert not redis.client().exists(job_key("no-such-job"))  # no stub record made


def test_a_stopping_worker_stops_its_stages_at_the_deadline(redis: EmbeddedRedis):
    jobs = Jobs(redis.client(), 60)
    job_ids = [new_job(jobs, "a"), new_job(jobs, "b")]
    for job_id in job_ids:
        jobs.stage_started(job_id, "base64", MODEL, "w1")
    jobs.hand_back_after(3600)
    assert not jobs.handing_back and jobs.progress(job_ids, "base64", 1, 4) == []
    jobs.hand_back_after(0)  # a second signal: at once
    assert jobs.handing_back
    assert jobs.progress(job_ids, "base64", 2, 4) == job_ids
    assert [jobs.get(job_id).stage("base64", "step") for job_id in job_ids] == ["1", "1"]
    assert jobs.stage_retrying(job_ids[0], "base64", "its worker was stopped")
    assert jobs.get(job_ids[0]).stage("base64", "status") == "queued"


def view_with_a_running_stage(worker: str) -> dict[str, object]:
    stage = {"name": "sr256", "status": "running", "worker": worker, "error": None}
    return {"stages": [stage]}


def test_an_orphaned_stage_promises_another_worker_only_when_one_serves_it():
    view = mark_orphaned(view_with_a_running_stage("gone"), lambda name: False, lambda stage: 1)
    assert view["stages"][0]["status"] == "queued"
    assert view["stages"][0]["error"] == ORPHANED
    assert "another worker will take the stage up" in ORPHANED

    counted: list[str] = []

    def serving(stage: str) -> int:
        counted.append(stage)
        return 0

    view = mark_orphaned(view_with_a_running_stage("gone"), lambda name: False, serving)
    error = view["stages"][0]["error"]
    assert counted == ["sr256"] and view["stages"][0]["status"] == "queued"
    assert error.startswith("retrying: its worker stopped responding")
    assert "another worker" not in error
    assert "no other worker serves stage sr256" in error and "restarts its worker" in error
    # A live worker's stage is left as it is (and no one is counted).
    counted.clear()
    view = mark_orphaned(view_with_a_running_stage("alive"), lambda name: True, serving)
    assert view["stages"][0]["status"] == "running" and counted == []
