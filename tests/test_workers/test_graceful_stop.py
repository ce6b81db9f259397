"""Stopping a `cascade worker` (SIGTERM) mid-stage, against a real Redis, on tiny presets: past
a short grace period the stage is handed back at once and the next worker retries it within
10 s; within a long one it finishes before the worker exits, and no new job is taken."""

from __future__ import annotations

import signal
import subprocess
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import CASCADE, free_port, service_env, wait_for
from redis import Redis
from rq import Worker
from rq.job import Job
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer

from api.main import create_app
from jobs.connection import EmbeddedRedis
from jobs.lifecycle import Jobs
from jobs.queues import stage_job_id, stage_queue
from jobs.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.service

TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}
# Long: a retry seen here comes from the hand-back, never from a heartbeat running out.
HEARTBEAT_TTL = 60
SHORT_GRACE, LONG_GRACE = 1.0, 120.0
RETRIED_WITHIN = 10.0
CTRL_C_STEPS = 400  # the stage under way when cascade serve gets Ctrl-C


@dataclass
class Rig:
    settings: Settings
    connection: Redis
    client: TestClient
    jobs: Jobs
    root: Path
    workers: list[subprocess.Popen]

    def start_worker(self, stop_grace: float) -> subprocess.Popen:
        env = service_env(self.settings, stop_grace=stop_grace)
        with open(self.root / f"worker-{len(self.workers)}.log", "w") as log:
            process = subprocess.Popen(
                [CASCADE, "worker", "--stages", "base64"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.workers.append(process)
        return process

    def wait_listening(self, process: subprocess.Popen) -> float:
        def listening() -> bool:
            assert process.poll() is None, f"worker exited with {process.returncode}"
            found = Worker.all(queue=stage_queue(self.connection, "base64"))
            return any(worker.pid == process.pid for worker in found)

        wait_for(listening, 120, f"worker {process.pid} to listen")
        return time.monotonic()

    def submit(self, steps: int) -> str:
        body = {"class_id": 1, "size": 64, "steps": steps}
        response = self.client.post("/v1/generations", json=body)
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def under_way(self, job_id: str) -> None:
        def sampling() -> bool:
            return int(self.jobs.get(job_id).stage("base64", "step") or 0) >= 2

        wait_for(sampling, 60, f"job {job_id} to be sampling")

    def rq_job(self, job_id: str) -> Job:
        job_key = stage_job_id(job_id, "base64")
        return Job.fetch(job_key, connection=self.connection, serializer=JSONSerializer)


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("stop")
    redis = EmbeddedRedis(root / "redis" / "stop.rdb")
    settings = Settings(
        redis_url=redis.url,
        store=str(root / "store"),
        torch_threads=1,
        heartbeat_interval=1,
        heartbeat_ttl=HEARTBEAT_TTL,
        maintenance_interval=2,
        max_batch=1,
        **TINY,
    )
    workers: list[subprocess.Popen] = []
    try:
        with TestClient(create_app(settings)) as client:
            yield Rig(settings, redis.client(), client, Jobs(redis.client(), 60), root, workers)
    finally:
        for process in workers:
            if process.poll() is None:
                process.kill()
            process.wait(15)
        redis.stop()


def test_past_the_grace_the_stage_is_handed_back_and_retried_at_once(rig: Rig):
    stopping = rig.start_worker(SHORT_GRACE)
    rig.wait_listening(stopping)
    job_id = rig.submit(steps=400)  # ~25 s of sampling here: far longer than the grace
    rig.under_way(job_id)
    retries_left = rig.rq_job(job_id).retries_left
    signaled = time.monotonic()
    stopping.send_signal(signal.SIGTERM)
    assert stopping.wait(SHORT_GRACE + 30) == 0
    took = time.monotonic() - signaled
    assert SHORT_GRACE <= took <= SHORT_GRACE + 30
    # Handed back: queued again in the record and at the front of the queue, nothing left
    # running for a heartbeat TTL to find, and no retry used up.
    record = rig.jobs.get(job_id)
    assert record.status == "running" and record.stage("base64", "status") == "queued"
    assert record.stage("base64", "error").startswith("retrying: its worker was stopped")
    assert 0 < int(record.stage("base64", "step")) < 400
    assert record.stage("base64", "attempts") == "1"
    assert stage_queue(rig.connection, "base64").job_ids == [stage_job_id(job_id, "base64")]
    assert rig.rq_job(job_id).get_status() == "queued"
    assert rig.rq_job(job_id).retries_left == retries_left
    assert StartedJobRegistry("cascade-base64", connection=rig.connection).get_job_ids() == []
    log = (rig.root / "worker-0.log").read_text()
    assert "handed back (the worker is stopping)" in log
    # The next worker (here: the restarted one) takes it up at once.
    successor = rig.start_worker(LONG_GRACE)
    listening = rig.wait_listening(successor)

    def retried() -> bool:
        return rig.jobs.get(job_id).stage("base64", "attempts") == "2"

    wait_for(retried, RETRIED_WITHIN, "the handed-back stage to be retried")
    assert time.monotonic() - listening <= RETRIED_WITHIN
    rig.client.delete(f"/v1/jobs/{job_id}")  # its 400 steps need not run to the end here
    wait_for(lambda: rig.jobs.get(job_id).stage("base64", "status") == "canceled", 30, "cancel")
    events = [event for event in rig.jobs.events.read(job_id) if event.type == "stage_retrying"]
    assert [event.data["error"] for event in events] == [
        "its worker was stopped before the stage finished; the next worker runs it"
    ]


def test_within_the_grace_the_stage_finishes_and_no_new_job_is_taken(rig: Rig):
    live = [process for process in rig.workers if process.poll() is None]  # the successor
    worker = live[0] if live else rig.start_worker(LONG_GRACE)
    rig.wait_listening(worker)
    job_id = rig.submit(steps=60)
    rig.under_way(job_id)
    worker.send_signal(signal.SIGTERM)
    waiting = rig.submit(steps=3)  # queued after the stop: the stopping worker leaves it
    assert worker.wait(LONG_GRACE) == 0
    record = rig.jobs.get(job_id)
    assert record.status == "succeeded"
    assert record.stage("base64", "attempts") == "1" and record.stage("base64", "step") == "60"
    assert rig.jobs.get(waiting).status == "queued"
    assert stage_queue(rig.connection, "base64").job_ids == [stage_job_id(waiting, "base64")]


def serve(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    with open(log, "w") as out:
        return subprocess.Popen(
            [CASCADE, "serve", "--port", str(port)], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def test_ctrl_c_on_cascade_serve_hands_the_stage_to_the_restarted_service(tmp_path: Path):
    port = free_port()
    env = service_env()
    env.update(
        CASCADE_STORE=str(tmp_path / "results"),
        CASCADE_EMBEDDED_REDIS=str(tmp_path / "redis" / "cascade.rdb"),
        CASCADE_TORCH_THREADS="1",
        CASCADE_HEARTBEAT_INTERVAL="1",
        CASCADE_HEARTBEAT_TTL=str(HEARTBEAT_TTL),
        CASCADE_MAINTENANCE_INTERVAL="2",
        CASCADE_STOP_GRACE=str(SHORT_GRACE),
        **{f"CASCADE_{key.upper()}": value for key, value in TINY.items()},
    )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def ready() -> bool:
        try:
            return http.get("/readyz").status_code == 200
        except httpx.TransportError:
            return False

    def stage(job_id: str) -> dict:
        return http.get(f"/v1/jobs/{job_id}").json()["stages"][0]

    first = serve(env, port, tmp_path / "serve-1.log")
    try:
        wait_for(ready, 120, "the service to be ready")
        # Long enough to outlast the grace: one torch thread runs the tiny base's 60 steps in
        # about a second, which the grace let finish.
        body = {"class_id": 1, "size": 64, "steps": CTRL_C_STEPS}
        response = http.post("/v1/generations", json=body)
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        wait_for(lambda: stage(job_id)["step"] >= 2, 60, "the stage to be under way")
        signaled = time.monotonic()
        first.send_signal(signal.SIGINT)
        assert first.wait(SHORT_GRACE + 30) == 0
    finally:
        if first.poll() is None:
            first.kill()
    assert time.monotonic() - signaled <= SHORT_GRACE + 30
    text = (tmp_path / "serve-1.log").read_text()
    assert "handed back (the worker is stopping)" in text
    assert "did not stop in time" not in text  # no SIGKILL: the worker handed back and exited

    again = serve(env, port, tmp_path / "serve-2.log")
    try:
        wait_for(ready, 120, "the restarted service to be ready")
        restarted = time.monotonic()
        wait_for(lambda: stage(job_id)["attempts"] == 2, RETRIED_WITHIN, "the stage's retry")
        assert time.monotonic() - restarted <= RETRIED_WITHIN
        job = wait_for(
            lambda: (job := http.get(f"/v1/jobs/{job_id}").json())["status"] == "succeeded" and job,
            90,
            "the job to succeed",
        )
        assert job["stages"][0]["attempts"] == 2 and job["stages"][0]["step"] == CTRL_C_STEPS
    finally:
        again.send_signal(signal.SIGINT)
        assert again.wait(60) == 0
        http.close()
