"""An idle worker serving several stage queues is frozen (SIGSTOP) and then killed: the stage job
submitted meanwhile is not lost. RQ's own pop from several queues (BLPOP) hands the job id to
the frozen worker's connection and so takes it out of Redis; `StageQueue` moves it into the
queue's intermediate list instead, which RQ's maintenance re-queues when the job never
started."""

from __future__ import annotations

import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from conftest import start_worker, wait_for
from redis import Redis
from rq import Worker
from rq.exceptions import DequeueTimeout
from rq.intermediate_queue import IntermediateQueue
from rq.job import Job
from rq.serializers import JSONSerializer

from api.main import create_app
from jobs.connection import EmbeddedRedis
from jobs.queues import stage_job_id, stage_queue
from jobs.settings import Settings
from workers.queue import StageQueue

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.service

TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}
ALL_STAGES = "base64,sr256,sr1024"


def listening(connection: Redis, process: subprocess.Popen) -> bool:
    assert process.poll() is None, f"worker exited with {process.returncode}"
    found = Worker.all(queue=stage_queue(connection, "base64"))
    return any(worker.pid == process.pid for worker in found)


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Settings, Redis, TestClient]]:
    redis = EmbeddedRedis(tmp_path / "redis" / "frozen.rdb")
    settings = Settings(
        redis_url=redis.url,
        store=str(tmp_path / "store"),
        torch_threads=1,
        heartbeat_interval=1,
        heartbeat_ttl=3,
        maintenance_interval=2,
        max_batch=1,
        **TINY,
    )
    try:
        with TestClient(create_app(settings)) as client:
            yield settings, redis.client(), client
    finally:
        redis.stop()


def test_a_job_queued_while_an_idle_worker_is_frozen_survives_its_death(rig, tmp_path: Path):
    settings, connection, client = rig
    frozen = start_worker(settings, tmp_path / "frozen.log", ALL_STAGES)
    replacement = None
    try:
        wait_for(lambda: listening(connection, frozen), 120, "the first worker to listen")
        time.sleep(1.0)  # well inside its wait for work
        frozen.send_signal(signal.SIGSTOP)
        response = client.post("/v1/generations", json={"class_id": 1, "size": 64, "steps": 4})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        queue_key = stage_queue(connection, "base64").key
        time.sleep(2.0)
        # The frozen worker took nothing: the stage job still waits in its queue.
        assert connection.lrange(queue_key, 0, -1) == [stage_job_id(job_id, "base64").encode()]
        frozen.kill()
        frozen.wait(15)
        replacement = start_worker(settings, tmp_path / "replacement.log", ALL_STAGES)
        wait_for(
            lambda: client.get(f"/v1/jobs/{job_id}").json()["status"] == "succeeded",
            120,
            "the job to succeed on the replacement worker",
        )
        assert connection.llen(queue_key + ":intermediate") == 0
    finally:
        for process in (frozen, replacement):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
                process.wait(15)


def test_a_job_popped_but_never_started_goes_back_to_its_queue(redis_server: EmbeddedRedis):
    """A worker that dies between the pop and the start leaves the id in the intermediate list,
    where RQ's maintenance finds it and retries it."""
    connection = redis_server.client()
    connection.flushall()
    queues = [stage_queue(connection, name) for name in ("sr1024", "sr256", "base64")]
    job = queues[2].enqueue("workers.stage.run_stage", "a" * 32, "base64", retry=None)
    job.retries_left = 1
    job.retry_intervals = [0]
    job.save()
    popped, queue = StageQueue.dequeue_any(queues, 1, connection=connection)
    assert (popped.id, queue.name) == (job.id, "cascade-base64")
    intermediate = IntermediateQueue(queues[2].key, connection)
    assert intermediate.get_job_ids() == [job.id]  # held in Redis, not only by the popper
    assert connection.llen(queues[2].key) == 0
    # The popper died; maintenance sees the id once, then again more than a minute later.
    cleaner = Worker(queues, connection=connection, serializer=JSONSerializer)
    intermediate.cleanup(cleaner, queues[2])
    stale = datetime.now(UTC) - timedelta(minutes=2)
    connection.set(intermediate.get_first_seen_key(job.id), stale.timestamp())
    intermediate.cleanup(cleaner, queues[2])
    assert intermediate.get_job_ids() == []
    assert connection.lrange(queues[2].key, 0, -1) == [job.id.encode()]
    assert Job.fetch(job.id, connection=connection, serializer=JSONSerializer).retries_left == 0


def test_several_queues_are_looked_at_in_order_and_an_empty_wait_times_out(
    redis_server: EmbeddedRedis,
):
    connection = redis_server.client()
    connection.flushall()
    queues = [stage_queue(connection, name) for name in ("sr1024", "sr256", "base64")]
    low = queues[2].enqueue("workers.stage.run_stage", "b" * 32, "base64")
    high = queues[0].enqueue("workers.stage.run_stage", "b" * 32, "sr1024")
    first, _ = StageQueue.dequeue_any(queues, 1, connection=connection)
    second, _ = StageQueue.dequeue_any(queues, 1, connection=connection)
    assert (first.id, second.id) == (high.id, low.id)
    assert StageQueue.dequeue_any(queues, None, connection=connection) is None
    started = time.monotonic()
    with pytest.raises(DequeueTimeout):
        StageQueue.dequeue_any(queues, 1, connection=connection)
    assert 0.9 <= time.monotonic() - started < 3.0
