"""Scaling with KEDA's rule, simulated on this machine with real `cascade worker` processes:
a 120-job burst of tiny-preset jobs, workers started as the queue grows and stopped (SIGTERM,
as Kubernetes scales in) once the cooldown has passed. Nothing is lost, nothing runs twice, no
stage is cut by a scale-in, and the deployment returns to its minimum.

The rule is the one deploy/kubernetes/scaledobjects.yaml configures (read from it): desired
replicas = ceil(metric / listLength) within [minReplicaCount, maxReplicaCount], scaling in only
after the metric has stayed below the current replicas for the cooldown; the metric here is
queued + in flight (what `/metrics` exports for KEDA's Prometheus scaler). Times are scaled
down (polling 0.5 s, cooldown 4 s) and the maximum lowered to 3 for this machine's 2 cores."""

from __future__ import annotations

import math
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
import yaml
from conftest import CASCADE, service_env, wait_for
from rq import Worker
from rq.registry import StartedJobRegistry

from api.main import create_app
from jobs.connection import EmbeddedRedis
from jobs.lifecycle import Jobs
from jobs.queues import stage_queue
from jobs.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.service

REPO = Path(__file__).resolve().parents[2]
TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}
BURST = 120  # ten times what the three replicas take at listLength 4: all of them run
POLL, COOLDOWN, MAX_REPLICAS = 0.5, 4.0, 3


def scaled_object(stage: str) -> dict:
    documents = yaml.safe_load_all((REPO / "deploy/kubernetes/scaledobjects.yaml").read_text())
    for document in documents:
        if document["metadata"]["name"] == f"cascade-worker-{stage}":
            return document["spec"]
    raise AssertionError(f"no ScaledObject for stage {stage}")


class Controller:
    """KEDA + the HPA for one stage's worker Deployment, acting on local processes."""

    def __init__(self, settings: Settings, root: Path, stage: str):
        spec = scaled_object(stage)
        self.minimum = spec["minReplicaCount"]
        self.maximum = min(spec["maxReplicaCount"], MAX_REPLICAS)
        self.per_replica = int(spec["triggers"][0]["metadata"]["listLength"])
        self.settings, self.root, self.stage = settings, root, stage
        self.replicas: list[subprocess.Popen] = []
        self.stopped: list[subprocess.Popen] = []
        self.started = 0
        self.peak = 0
        self.busy_since = time.monotonic()  # the last time the metric asked for the replicas

    def metric(self, connection) -> int:
        queued = stage_queue(connection, self.stage).count
        running = StartedJobRegistry(f"cascade-{self.stage}", connection=connection).count
        return queued + running

    def desired(self, metric: int) -> int:
        return max(self.minimum, min(self.maximum, math.ceil(metric / self.per_replica)))

    def start(self) -> None:
        log = open(self.root / f"worker-{self.started}.log", "w")  # noqa: SIM115 (kept open)
        process = subprocess.Popen(
            [CASCADE, "worker", "--stages", self.stage],
            env=service_env(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.started += 1
        self.replicas.append(process)

    def step(self, connection) -> None:
        want = self.desired(self.metric(connection))
        now = time.monotonic()
        if want >= len(self.replicas):
            self.busy_since = now
        while len(self.replicas) < want:
            self.start()
        if want < len(self.replicas) and now - self.busy_since >= COOLDOWN:
            process = self.replicas.pop()  # scale in by one; Kubernetes sends SIGTERM
            process.send_signal(signal.SIGTERM)
            self.stopped.append(process)
            self.busy_since = now  # one step at a time, each after a cooldown
        self.peak = max(self.peak, len(self.replicas))

    def close(self) -> None:
        for process in self.replicas + self.stopped:
            if process.poll() is None:
                process.kill()
            process.wait(15)


def test_a_burst_scales_out_and_back_in_losing_and_repeating_nothing(tmp_path: Path):
    redis = EmbeddedRedis(tmp_path / "redis" / "scale.rdb")
    settings = Settings(
        redis_url=redis.url,
        store=str(tmp_path / "store"),
        torch_threads=1,
        heartbeat_interval=1,
        heartbeat_ttl=60,  # a retry seen here would come from a cut stage, not a lost heartbeat
        maintenance_interval=2,
        rate_limit="100000/minute",
        **TINY,
    )
    connection = redis.client()
    jobs = Jobs(connection, 600)
    controller = Controller(settings, tmp_path, "base64")
    try:
        with TestClient(create_app(settings)) as client:
            controller.step(connection)  # the minimum, before the burst
            ids = []
            for index in range(BURST):
                body = {"class_id": index % 7, "size": 64, "steps": 2, "seed": index}
                response = client.post("/v1/generations", json=body)
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
                if index % 25 == 0:
                    controller.step(connection)

            def all_ended() -> bool:
                controller.step(connection)
                time.sleep(POLL)
                return all(jobs.get(job_id).ended for job_id in ids)

            wait_for(all_ended, 600, f"the {BURST} jobs to end")

            def back_to_minimum() -> bool:
                controller.step(connection)
                time.sleep(POLL)
                return len(controller.replicas) == controller.minimum

            wait_for(back_to_minimum, 60, "the workers to scale back in")
        for process in controller.stopped:
            assert process.wait(60) == 0, "a scaled-in worker did not stop cleanly"
        records = [jobs.get(job_id) for job_id in ids]
        assert [record.status for record in records] == ["succeeded"] * BURST  # 0 lost
        # 0 duplicated, 0 cut by a scale-in: every stage ran once, never handed back.
        assert {record.stage("base64", "attempts") for record in records} == {"1"}
        assert {record.stage("base64", "error") for record in records} <= {None, ""}
        results = [tmp_path / "store" / job_id / "result.png" for job_id in ids]
        assert all(path.is_file() for path in results)
        assert controller.peak == controller.maximum and len(controller.stopped) >= 1
        live = [
            w
            for w in Worker.all(queue=stage_queue(connection, "base64"))
            if w.get_state() != "dead"
        ]
        assert len(live) == controller.minimum
        logs = "".join(path.read_text() for path in tmp_path.glob("worker-*.log"))
        assert "handed back" not in logs
    finally:
        controller.close()
        redis.stop()
