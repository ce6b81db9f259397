"""The stage job and the job record, in-process against a real (embedded) Redis: success,
resuming after a crash, failures users can read, retries, and ending a job exactly once."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
from redis.exceptions import ConnectionError as RedisConnectionError
from rq.exceptions import AbandonedJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from cascade.stages import StageRun
from jobs.connection import EmbeddedRedis
from jobs.lifecycle import HANDOFF_REFERENCE, Jobs
from jobs.plan import PlannedStage
from jobs.queues import enqueue_stage, stage_job_id, stage_queue
from jobs.record import NewJob, tensor_key
from jobs.sender import deliver_pending
from jobs.settings import Settings, get_settings
from jobs.stats import read_stage, record_stage
from workers import runtime as runtime_module
from workers.runtime import Runtime
from workers.stage import on_stage_failure, run_stage

STAGES = [("base64", 64), ("sr256", 256)]
TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}


@pytest.fixture
def runtime(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[Runtime]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as a worker sharing the CPU would (see CASCADE_TORCH_THREADS)
    redis_server.client().flushdb()
    settings = Settings(redis_url=redis_server.url, store=str(tmp_path), retries=1, **TINY)
    runtime = Runtime(settings, redis_server.client())
    runtime_module.install(runtime)
    yield runtime
    runtime_module.install(None)  # type: ignore[arg-type]
    torch.set_num_threads(threads)


def new_job(runtime: Runtime, size: int = 256, kind: str = "generation") -> str:
    stages = STAGES[: 1 if size == 64 else 2]
    plan = [PlannedStage(name, side, side, StageRun("ddim", 2)) for name, side in stages]
    if kind == "upscale":
        plan = [PlannedStage("sr256", 256, 256, StageRun("ddim", 2))]
    job = NewJob(f"job{size}{kind}", kind, {"class_id": 1}, 11, plan, (size, size))  # type: ignore[arg-type]
    runtime.jobs.create(job)
    return job.id


def test_two_stages_in_process(runtime: Runtime):
    job_id = new_job(runtime)
    run_stage(job_id, "base64")
    queued = stage_queue(runtime.connection, "sr256").job_ids
    assert queued == [stage_job_id(job_id, "sr256")]  # handed on through the next queue
    assert runtime.jobs.get_tensor(job_id, "base64") is not None  # float tensor, not a PNG
    run_stage(job_id, "sr256")
    record = runtime.jobs.get(job_id)
    assert record.status == "succeeded"
    store = Path(runtime.settings.store) / job_id
    assert {path.name for path in store.iterdir()} == {
        "base64.png",
        "sr256.png",
        "result.png",
        "job.json",
    }
    assert runtime.jobs.get_tensor(job_id, "base64") is None  # freed once the job ended
    run_stage(job_id, "sr256")  # a duplicate delivery changes nothing
    assert runtime.jobs.get(job_id).fields == record.fields


def test_events_of_a_job_run_by_a_worker(runtime: Runtime):
    job_id = new_job(runtime)
    run_stage(job_id, "base64")
    run_stage(job_id, "sr256")
    events = runtime.jobs.events.read(job_id)
    story = [event.type for event in events if event.type != "progress"]
    assert story == [
        "queued",
        *("stage_started", "stage_finished") * 2,
        "succeeded",
    ]
    for stage in ("base64", "sr256"):
        steps = [
            (event.data["step"], event.data["steps"])
            for event in events
            if event.type == "progress" and event.data["stage"] == stage
        ]
        assert steps and steps[0][0] == 1 and steps[-1][0] == steps[-1][1]  # first and last
    # Every progress event sits between its stage's start and finish.
    stage_of = None
    for event in events:
        if event.type == "stage_started":
            stage_of = event.data["stage"]
        elif event.type == "progress":
            assert event.data["stage"] == stage_of
        elif event.type == "stage_finished":
            assert event.data["stage"] == stage_of
            preview = Path(runtime.settings.store) / job_id / f"{stage_of}.png"
            assert preview.is_file()  # stored before it is announced
    stored = json.loads((Path(runtime.settings.store) / job_id / "job.json").read_text())
    assert events[-1].data["status"] == stored["status"] == "succeeded"
    assert events[-1].data["stages"] == stored["stages"]


def test_retry_of_a_finished_stage_hands_on(runtime: Runtime):
    """A worker killed after finishing a stage but before queueing the next one: the retry
    queues the next stage instead of losing the job."""
    job_id = new_job(runtime)
    run_stage(job_id, "base64")
    stage_queue(runtime.connection, "sr256").empty()
    runtime.jobs.write(job_id, {"sr256.status": "queued"})  # as if the enqueue never happened
    run_stage(job_id, "base64")
    assert stage_queue(runtime.connection, "sr256").job_ids == [stage_job_id(job_id, "sr256")]


class Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []
    headers_received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        Receiver.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        Receiver.headers_received.append(dict(self.headers))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_missing_input_fails_with_a_sentence_and_a_webhook(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setenv("CASCADE_WEBHOOK_ALLOW", "127.0.0.1")  # the receiver below is local
    get_settings.cache_clear()
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    plan = [PlannedStage("sr256", 256, 256, StageRun("ddim", 2))]
    url = f"http://127.0.0.1:{server.server_port}/hook"
    job = NewJob("lost", "upscale", {"scale": 4}, 1, plan, (256, 256), webhook_url=url)
    runtime.jobs.create(job)  # no uploaded tensor stored
    try:
        run_stage(job.id, "sr256")
        assert Receiver.received == []  # queued for the sender, not sent by the stage job
        deliver_pending(runtime.connection, runtime.settings)
    finally:
        server.shutdown()
        get_settings.cache_clear()
    record = runtime.jobs.get(job.id)
    assert record.status == "failed"
    assert "stage sr256 failed" in record.fields["error"] and "expired" in record.fields["error"]
    assert read_stage(runtime.connection, "sr256").outcomes["failed"] == 1
    assert [(hook["id"], hook["status"]) for hook in Receiver.received] == [("lost", "failed")]
    assert Receiver.received[0]["error"] == record.fields["error"]
    # The webhook posts the job's terminal event, as its log holds it.
    end = runtime.jobs.events.last(job.id)
    assert Receiver.received[0] == end.data
    assert Receiver.headers_received[0]["X-Cascade-Event"] == "failed"
    assert Receiver.headers_received[0]["X-Cascade-Event-Id"] == end.id


def test_canceled_job_does_not_start_its_stage(runtime: Runtime):
    job_id = new_job(runtime)
    assert runtime.jobs.end(job_id, "canceled")
    run_stage(job_id, "base64")
    record = runtime.jobs.get(job_id)
    assert record.status == "canceled" and record.stage("base64", "status") == "canceled"
    assert record.stage("base64", "step") is None  # never sampled


def test_failure_callback_retries_then_fails(runtime: Runtime):
    job_id = new_job(runtime)
    enqueue_stage(runtime.connection, runtime.settings, job_id, "base64")
    rq_job = Job.fetch(
        stage_job_id(job_id, "base64"), connection=runtime.connection, serializer=JSONSerializer
    )
    assert rq_job.retries_left == 1
    error = RedisConnectionError("Error 111 connecting to /srv/redis.sock")
    runtime.jobs.stage_started(job_id, "base64", {"model": "m"}, "worker-a")
    on_stage_failure(rq_job, runtime.connection, RedisConnectionError, error, None)
    record = runtime.jobs.get(job_id)
    assert record.status == "running" and record.stage("base64", "status") == "queued"
    assert record.stage("base64", "error") == (
        "retrying: the worker lost its connection to the job queue (Redis)"
    )
    rq_job.retries_left = 0
    runtime.jobs.stage_started(job_id, "base64", {"model": "m"}, "worker-b")
    on_stage_failure(rq_job, runtime.connection, AbandonedJobError, AbandonedJobError(), None)
    record = runtime.jobs.get(job_id)
    assert record.status == "failed"
    assert record.fields["error"] == (
        "stage base64 failed: the worker running it stopped (killed, crashed or lost its "
        "connection) (attempt 2, no retries left)"
    )


def test_deterministic_failure_is_not_retried_and_not_shown(runtime: Runtime):
    job_id = new_job(runtime)
    enqueue_stage(runtime.connection, runtime.settings, job_id, "base64")
    rq_job = Job.fetch(
        stage_job_id(job_id, "base64"), connection=runtime.connection, serializer=JSONSerializer
    )
    assert rq_job.retries_left == 1
    error = RuntimeError("shape mismatch in /opt/cascade/cascade/sr3.py line 88")
    runtime.jobs.stage_started(job_id, "base64", {"model": "m"}, "worker-a")
    on_stage_failure(rq_job, runtime.connection, RuntimeError, error, None)
    assert rq_job.retries_left == 0  # RQ reads it after the callback: no retry
    record = runtime.jobs.get(job_id)
    assert record.status == "failed"
    assert record.fields["error"] == (
        "stage base64 failed: an internal error in stage base64; the service logged the details"
    )
    assert "/opt" not in json.dumps(record.fields) and "RuntimeError" not in json.dumps(
        record.fields
    )


def test_a_job_ends_once(runtime: Runtime):
    jobs = Jobs(runtime.connection, 60)
    job_id = new_job(runtime)
    assert jobs.end(job_id, "canceled")
    assert not jobs.end(job_id, "succeeded")
    assert not jobs.update(job_id, {"status": "running"})
    assert jobs.get(job_id).status == "canceled"
    assert not jobs.end("no-such-job", "failed")
    assert 0 < runtime.connection.ttl(f"cascade:job:{job_id}") <= 60


def test_stage_statistics(runtime: Runtime):
    record_stage(runtime.connection, "sr1024", 0.3, "succeeded")
    record_stage(runtime.connection, "sr1024", 7.0, "succeeded")
    record_stage(runtime.connection, "sr1024", 0.0, "failed")
    stats = read_stage(runtime.connection, "sr1024")
    buckets = dict(stats.buckets)
    assert buckets[0.5] == 1 and buckets[5] == 1 and buckets[10] == 2 and buckets[float("inf")] == 2
    assert stats.total_seconds == pytest.approx(7.3)
    assert stats.outcomes == {"succeeded": 2, "failed": 1, "canceled": 0, "retried": 0}


def test_stage_statistics_price_work(runtime: Runtime):
    assert read_stage(runtime.connection, "sr256").seconds_per_work is None  # nothing measured
    record_stage(runtime.connection, "sr256", 4.0, "succeeded", work=1000, batch=2)
    record_stage(runtime.connection, "sr256", 3.0, "succeeded", work=2000)
    record_stage(runtime.connection, "sr256", 9.0, "succeeded")  # no work given: not priced
    stats = read_stage(runtime.connection, "sr256")
    assert stats.work == 3000 and stats.work_runs == 2
    assert stats.seconds_per_work == pytest.approx((2.0 + 3.0) / 3000)  # a batch shares its time
    assert stats.seconds_per_run == pytest.approx(2.5)
    job_id = new_job(runtime)
    run_stage(job_id, "base64")
    measured = read_stage(runtime.connection, "base64")
    assert measured.work == 64 * 64 * 2 and measured.seconds_per_work > 0


def test_hand_offs_through_the_store_give_the_same_image(runtime: Runtime, tmp_path: Path):
    inline = new_job(runtime)
    run_stage(inline, "base64")
    run_stage(inline, "sr256")
    runtime.settings = runtime.settings.model_copy(update={"handoff_inline_bytes": 0})
    runtime.jobs.settings = runtime.settings
    plan = [PlannedStage(name, side, side, StageRun("ddim", 2)) for name, side in STAGES]
    stored = NewJob("e" * 32, "generation", {"class_id": 1}, 11, plan, (256, 256))
    runtime.jobs.create(stored)
    run_stage(stored.id, "base64")
    reference = runtime.connection.get(tensor_key(stored.id, "base64"))
    assert reference.startswith(HANDOFF_REFERENCE) and len(reference) < 100  # only a name
    assert (tmp_path / stored.id / "base64.tensor").is_file()
    run_stage(stored.id, "sr256")
    assert runtime.jobs.get(stored.id).status == "succeeded"
    folder = {path.name for path in (tmp_path / stored.id).iterdir()}
    assert folder == {"base64.png", "sr256.png", "result.png", "job.json"}  # hand-off freed
    result = (tmp_path / stored.id / "result.png").read_bytes()
    assert result == (tmp_path / inline / "result.png").read_bytes()
