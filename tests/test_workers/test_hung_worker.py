"""A hung worker against a real Redis and real `cascade worker` processes on tiny presets: the
worker running a stage is SIGSTOPped past the heartbeat TTL, the other worker retries the stage,
and the first, SIGCONTed while the retry runs, stops at its next step and writes nothing."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
import warnings
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import CASCADE, free_port, service_env, start_worker, wait_for
from redis import Redis
from rq import Worker
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from api.main import create_app
from jobs.connection import EmbeddedRedis
from jobs.lifecycle import Jobs
from jobs.queues import stage_job_id, stage_queue, worker_alive
from jobs.record import job_key
from jobs.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.service

TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}
HEARTBEAT_TTL, MAINTENANCE = 3, 2


def listening(connection: Redis, process: subprocess.Popen) -> bool:
    assert process.poll() is None, f"worker exited with {process.returncode}"
    found = Worker.all(queue=stage_queue(connection, "base64"))
    return any(worker.pid == process.pid for worker in found)


class Sampler:
    """Reads the stage's stored (attempt, step, worker) as fast as it can, in a thread."""

    def __init__(self, connection: Redis, job_id: str):
        self.connection, self.job_id = connection, job_id
        self.samples: list[tuple[int, int, str]] = []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        fields = ["base64.attempts", "base64.step", "base64.worker"]
        while not self.done.is_set():
            attempts, step, worker = self.connection.hmget(job_key(self.job_id), fields)
            if attempts is not None and step is not None:
                self.samples.append((int(attempts), int(step), (worker or b"").decode()))
            time.sleep(0.01)

    def stop(self) -> list[tuple[int, int, str]]:
        self.done.set()
        self.thread.join(5)
        return self.samples


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[tuple[Settings, Redis, TestClient, list[subprocess.Popen]]]:
    redis = EmbeddedRedis(tmp_path / "redis" / "hung.rdb")
    settings = Settings(
        redis_url=redis.url,
        store=str(tmp_path / "store"),
        torch_threads=1,
        heartbeat_interval=1,
        heartbeat_ttl=HEARTBEAT_TTL,
        maintenance_interval=MAINTENANCE,
        max_batch=1,
        **TINY,
    )
    workers = [start_worker(settings, tmp_path / f"worker-{index}.log") for index in range(2)]
    try:
        with TestClient(create_app(settings)) as client:
            for process in workers:
                wait_for(lambda p=process: listening(redis.client(), p), 120, "a worker to listen")
            yield settings, redis.client(), client, workers
    finally:
        for process in workers:
            if process.poll() is None:
                process.send_signal(signal.SIGCONT)
                process.kill()
            process.wait(15)
        redis.stop()


def test_a_resumed_hung_worker_writes_nothing(rig, tmp_path: Path):
    settings, connection, client, workers = rig
    response = client.post("/v1/generations", json={"class_id": 1, "size": 64, "steps": 60})
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    jobs = Jobs(connection, 60)
    sampler = Sampler(connection, job_id)

    def under_way() -> bool:
        record = jobs.get(job_id)
        return int(record.stage("base64", "step") or 0) >= 2

    wait_for(under_way, 60, "the stage to be under way")
    name = jobs.get(job_id).stage("base64", "worker")
    found = Worker.find_by_key(f"rq:worker:{name}", connection=connection)
    hung = next(process for process in workers if process.pid == found.pid)
    other = next(process for process in workers if process is not hung)
    os.kill(hung.pid, signal.SIGSTOP)
    stopped = time.monotonic()
    step_when_hung = int(jobs.get(job_id).stage("base64", "step"))

    # While it hangs (stored: running), the job page says another worker will take the stage
    # up, and one does.
    def shown_orphaned() -> str | None:
        stage = client.get(f"/v1/jobs/{job_id}").json()["stages"][0]
        stored = jobs.get(job_id).stage("base64", "status")
        if stage["attempts"] >= 2 or stored != "running":
            return "retried before the page was read"
        return stage["error"] if stage["status"] == "queued" else None

    shown = wait_for(shown_orphaned, settings.worker_fresh_seconds + 10, "the stage shown waiting")
    assert shown == "retried before the page was read" or "another worker will take" in shown

    def retry_under_way() -> bool:
        record = jobs.get(job_id)
        return (
            record.stage("base64", "attempts") == "2" and int(record.stage("base64", "step")) >= 2
        )

    wait_for(retry_under_way, HEARTBEAT_TTL + MAINTENANCE + 20, "the other worker's retry")
    assert time.monotonic() - stopped <= HEARTBEAT_TTL + MAINTENANCE + 20
    retried_by = jobs.get(job_id).stage("base64", "worker")
    assert retried_by != name
    os.kill(hung.pid, signal.SIGCONT)  # both now sample the same stage, as in the report
    hung_log = tmp_path / "worker-0.log" if hung is workers[0] else tmp_path / "worker-1.log"
    wait_for(
        lambda: "taken over by a newer attempt" in hung_log.read_text(),
        30,
        "the resumed worker to stop at its next step",
    )
    wait_for(lambda: jobs.get(job_id).status == "succeeded", 60, "the job to succeed")
    samples = sampler.stop()

    record = jobs.get(job_id)
    assert record.stage("base64", "status") == "succeeded"
    assert record.stage("base64", "attempts") == "2"  # one retry; the stale heartbeat made none
    assert record.stage("base64", "worker") == retried_by
    view = client.get(f"/v1/jobs/{job_id}").json()
    assert view["stages"][0]["status"] == "succeeded" and view["stages"][0]["attempts"] == 2
    # Stored progress never went backwards: attempt by attempt, step by step; the first attempt
    # stood still from its SIGSTOP on, and everything from the retry on is the retry's.
    assert samples == sorted(samples, key=lambda sample: sample[:2]), samples
    first = [step for attempt, step, _ in samples if attempt == 1]
    assert max(first) <= step_when_hung + 1  # a step in flight as the signal came may land
    assert {worker for attempt, _, worker in samples if attempt == 2} == {retried_by}
    # The event log tells one story: the retry's steps only rise, and one stage finished.
    events = jobs.events.read(job_id)
    types = [event.type for event in events if event.type != "progress"]
    assert types == [
        "queued",
        *("stage_started", "stage_retrying"),
        *("stage_started", "stage_finished"),
        "succeeded",
    ]
    retry_at = [index for index, event in enumerate(events) if event.type == "stage_started"][1]
    steps = [event.data["step"] for event in events[retry_at:] if event.type == "progress"]
    assert steps == sorted(steps) and steps[-1] == 60
    # RQ's bookkeeping is the retry's: finished, and no execution left behind by either worker.
    rq_job = Job.fetch(stage_job_id(job_id, "base64"), connection, serializer=JSONSerializer)
    assert rq_job.get_status() == "finished"
    assert StartedJobRegistry("cascade-base64", connection=connection).get_job_ids() == []
    assert "superseded by a newer attempt" in hung_log.read_text()
    # Both workers live on: the one that hung beats its heartbeat again.
    assert hung.poll() is None and other.poll() is None
    fresh = settings.worker_fresh_seconds
    wait_for(lambda: worker_alive(connection, name, fresh), fresh + 10, "the resumed one's beat")


def worker_pid(serve: subprocess.Popen) -> int | None:
    """The pid of the worker `cascade serve` runs (None between a death and its restart)."""
    for child in psutil.Process(serve.pid).children():
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:  # a zombie not reaped yet, or gone
            continue
        if "cascade.cli worker" in command:
            return child.pid
    return None


def gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_cascade_serve_replaces_a_hung_worker(tmp_path: Path):
    port = free_port()
    env = service_env()
    env.update(
        CASCADE_STORE=str(tmp_path / "results"),
        CASCADE_EMBEDDED_REDIS=str(tmp_path / "redis" / "cascade.rdb"),
        CASCADE_TORCH_THREADS="1",
        CASCADE_HEARTBEAT_INTERVAL="1",
        CASCADE_HEARTBEAT_TTL=str(HEARTBEAT_TTL),
        CASCADE_MAINTENANCE_INTERVAL=str(MAINTENANCE),
        CASCADE_REDIS_BACKOFF_MAX="1",
        **{f"CASCADE_{key.upper()}": value for key, value in TINY.items()},
    )
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        serve = subprocess.Popen(
            [CASCADE, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def ready() -> bool:
        try:
            return http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def view(job_id: str) -> dict:
        return http.get(f"/v1/jobs/{job_id}").json()

    hung = None
    try:
        wait_for(ready, 120, "the service to be ready")
        response = http.post("/v1/generations", json={"class_id": 1, "size": 256, "steps": 40})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]

        def upscaling() -> bool:
            stage = view(job_id)["stages"][1]
            return stage["status"] == "running" and stage["step"] >= 2

        wait_for(upscaling, 90, "stage sr256 to be under way")
        hung = worker_pid(serve)
        assert hung is not None
        os.kill(hung, signal.SIGSTOP)
        stopped = time.time()
        # Killed by PID and replaced; the stage goes on from base64's stored output.
        replaced = wait_for(
            lambda: (pid := worker_pid(serve)) not in (None, hung) and pid,
            90,
            "the hung worker to be replaced",
        )
        assert gone(hung)
        job = wait_for(
            lambda: (job := view(job_id))["status"] == "succeeded" and job, 90, "the job to succeed"
        )
        base, upscaler = job["stages"]
        assert base["attempts"] == 1 and upscaler["attempts"] == 2
        retried = datetime.fromisoformat(upscaler["started_at"]).timestamp()
        assert retried - stopped <= 90  # the bound at the default TTL (60 s), met here at 3 s
        assert serve.poll() is None and worker_pid(serve) == replaced
    finally:
        if hung is not None and not gone(hung):
            os.kill(hung, signal.SIGCONT)  # a failed test must not leave it stopped
        serve.send_signal(signal.SIGINT)
        assert serve.wait(90) == 0
        http.close()
    text = log_path.read_text()
    assert f"worker (pid {hung}) has not beaten its heartbeat for" in text
    assert f"worker (pid {hung}) exited with code -9; restarting in" in text
