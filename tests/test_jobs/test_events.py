"""The job's event log against a real (embedded) Redis: what job control appends at each state
change, throttled progress, exactly one terminal event and nothing after it."""

from __future__ import annotations

import pytest

from cascade.stages import StageRun
from jobs import lifecycle as lifecycle_module
from jobs.connection import EmbeddedRedis
from jobs.events import EventLog, events_key, parse_event_id
from jobs.lifecycle import Jobs
from jobs.plan import PlannedStage
from jobs.record import NewJob, job_key


@pytest.fixture
def jobs(redis_server: EmbeddedRedis) -> Jobs:
    redis_server.client().flushdb()
    return Jobs(redis_server.client(), 60)


def new_job(jobs: Jobs, job_id: str = "job", steps: int = 4) -> str:
    plan = [
        PlannedStage("base64", 64, 64, StageRun("ddim", steps)),
        PlannedStage("sr256", 256, 256, StageRun("ddim", steps)),
    ]
    jobs.create(NewJob(job_id, "generation", {"class_id": 1}, 7, plan, (256, 256)))
    return job_id


def types(jobs: Jobs, job_id: str) -> list[str]:
    return [event.type for event in jobs.events.read(job_id)]


def test_a_job_tells_its_story(jobs: Jobs, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(lifecycle_module, "PROGRESS_INTERVAL", 0.0)  # every step
    job_id = new_job(jobs, steps=2)
    for stage in ("base64", "sr256"):
        assert jobs.stage_started(job_id, stage, {"model": "tiny", "random_weights": True}, "w1")
        for step in (1, 2):
            assert jobs.progress([job_id], stage, step, 2) == []
        jobs.stage_ended(job_id, stage, "succeeded")
    assert jobs.end(job_id, "succeeded")
    events = jobs.events.read(job_id)
    assert [event.type for event in events] == [
        "queued",
        *("stage_started", "progress", "progress", "stage_finished") * 2,
        "succeeded",
    ]
    ids = [parse_event_id(event.id) for event in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    queued, started, first, last, finished = events[:5]
    assert queued.data["status"] == "queued" and [s["name"] for s in queued.data["stages"]] == [
        "base64",
        "sr256",
    ]
    assert started.data == {
        "stage": "base64",
        "attempt": 1,
        "worker": "w1",
        "model": "tiny",
        "random_weights": True,
    }
    assert (first.data["step"], first.data["steps"], last.data["step"]) == (1, 2, 2)
    assert 0 < first.data["progress"] < last.data["progress"] < 1  # base64 is a small share
    assert finished.data["preview"] == f"/v1/jobs/{job_id}/stages/base64"
    assert finished.data["seconds"] >= 0
    end = events[-1]
    assert end.terminal and end.data["status"] == "succeeded" and end.data["progress"] == 1.0
    assert end.data["result"] == f"/v1/jobs/{job_id}/result"
    assert jobs.events.last(job_id) == end
    assert [event.type for event in jobs.events.read(job_id, after=events[-2].id)] == ["succeeded"]
    ttl = jobs.connection.ttl(events_key(job_id))
    assert 0 < ttl <= 60  # the log lives as long as the record


def test_progress_is_throttled_but_the_last_step_always_goes(jobs: Jobs):
    job_id = new_job(jobs, steps=50)
    jobs.stage_started(job_id, "base64", {"model": "tiny"}, "w1")
    for step in range(1, 51):  # far faster than one step per PROGRESS_INTERVAL
        jobs.progress([job_id], "base64", step, 50)
    steps = [event.data["step"] for event in jobs.events.read(job_id) if event.type == "progress"]
    assert steps[0] == 1 and steps[-1] == 50 and len(steps) <= 4


def test_nothing_follows_the_terminal_event(jobs: Jobs):
    job_id = new_job(jobs)
    jobs.stage_started(job_id, "base64", {"model": "tiny"}, "w1")
    assert jobs.end(job_id, "canceled")
    assert not jobs.end(job_id, "succeeded")  # the first ending wins, and only it is logged
    assert jobs.progress([job_id], "base64", 3, 4) == [job_id]  # the worker learns to stop
    assert not jobs.stage_ended(job_id, "base64", "canceled")  # the end has ended it already
    assert not jobs.stage_started(job_id, "sr256", {"model": "tiny"}, "w1")
    assert types(jobs, job_id) == ["queued", "stage_started", "canceled"]
    view = jobs.events.last(job_id).data
    assert view["status"] == "canceled"
    # A cancel ends the running stage and those that never started before the terminal view
    # is taken: no stage of an ended job is left running.
    assert [stage["status"] for stage in view["stages"]] == ["canceled", "canceled"]


def test_a_retried_stage_and_a_failure(jobs: Jobs):
    job_id = new_job(jobs)
    jobs.stage_started(job_id, "base64", {"model": "tiny"}, "w1")
    assert jobs.stage_retrying(job_id, "base64", "RuntimeError: boom")
    jobs.stage_started(job_id, "base64", {"model": "tiny"}, "w2")
    error = "stage base64 failed: boom"
    assert jobs.end(job_id, "failed", error, stage="base64", stage_error="boom")
    events = jobs.events.read(job_id)
    assert [event.type for event in events] == [
        "queued",
        "stage_started",
        "stage_retrying",
        "stage_started",
        "failed",
    ]
    assert events[2].data == {"stage": "base64", "error": "RuntimeError: boom"}
    assert events[3].data["attempt"] == 2
    assert events[-1].data["error"] == "stage base64 failed: boom"
    failed = events[-1].data["stages"][0]
    assert (failed["status"], failed["error"]) == ("failed", "boom")


def test_appends_are_refused_for_an_unknown_job(redis_server: EmbeddedRedis):
    log = EventLog(redis_server.client(), 60)
    assert log.append(job_key("ghost"), "ghost", "progress", {}) is None
    assert log.read("ghost") == [] and log.last("ghost") is None


@pytest.mark.parametrize("text", ["", "abc", "1-", "-1", "1-2-3", "1.5-0", "0-0 junk"])
def test_event_ids_are_checked(text: str):
    with pytest.raises(ValueError, match="not an event id"):
        parse_event_id(text)
