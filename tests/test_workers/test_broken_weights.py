"""Broken weights against real `cascade worker` processes, the API and a real (embedded) Redis:
a worker serves the stages whose weights load and reports the others, /readyz and submissions
say why, a worker with nothing loaded keeps reporting, and a stage whose output is NaN fails
its job at once with a sentence instead of a black image."""

from __future__ import annotations

import hashlib
import json
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import service_env, wait_for
from redis import Redis
from rq import Worker

from api.main import create_app
from cascade.checkpoints import CheckpointError, load, save_model
from jobs.connection import EmbeddedRedis
from jobs.queues import stage_queue
from jobs.settings import Settings
from workers.stage import failure_reason

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.service

NAN_OUTPUT = "stage sr256 failed: sr256 produced NaN: its weights or inputs are broken"


def save_preset(path: Path, preset: str, change: Callable[[dict], None] | None = None) -> Path:
    """A preset's random weights saved as a checkpoint file, changed by `change` first."""
    model = load(f"preset:{preset}")
    state = {key: value.clone() for key, value in model.network.state_dict().items()}
    if change is not None:
        change(state)
    return save_model(path, model.spec, state)


def poison(state: dict) -> None:
    """NaN in one tensor: what a diverged training run saves."""
    state["downs.0.weight"].view(-1)[:3] = float("nan")


def overflow(state: dict) -> None:
    """Finite weights whose forward overflows float32 (so the load check passes) and turns NaN."""
    state["downs.0.weight"].fill_(3e38)


@dataclass
class Rig:
    redis: Redis
    settings: Settings
    client: TestClient
    root: Path
    weights: Path
    logs: Path
    processes: dict[str, subprocess.Popen]
    started: float

    def start_worker(self, name: str, stages: str, **weights: str) -> subprocess.Popen:
        env = service_env(
            self.settings, **{f"weights_{stage}": path for stage, path in weights.items()}
        )
        log = open(self.logs / f"worker-{name}.log", "w")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "cascade.cli", "worker", "--stages", stages],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.processes[name] = process
        return process

    def registration(self, process: subprocess.Popen) -> Worker | None:
        """The process's RQ worker registration, once it has registered."""
        assert process.poll() is None, f"worker exited with {process.returncode}"
        found = [w for w in Worker.all(connection=self.redis) if w.pid == process.pid]
        return found[0] if found else None

    def wait_registered(self, process: subprocess.Popen) -> Worker:
        return wait_for(lambda: self.registration(process), 120, f"worker {process.pid}")  # type: ignore[return-value]

    def generate(self, size: int) -> object:
        body = {"class_id": 1, "size": size, "steps": 2}
        return self.client.post("/v1/generations", json=body)

    def wait_ended(self, job_id: str) -> dict:
        def ended() -> dict | None:
            view = self.client.get(f"/v1/jobs/{job_id}").json()
            return view if view["status"] in ("succeeded", "failed", "canceled") else None

        return wait_for(ended, 90, f"job {job_id} to end")  # type: ignore[return-value]


@pytest.fixture(scope="module")
def rig(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """Weights on disk (a good base, a NaN sr256, no sr1024 at all), the API, and worker `a`
    serving base64 and sr256 with them; the tests below run in order and add workers."""
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("weights-rig")
    weights, logs = root / "weights", root / "logs"
    logs.mkdir()
    save_preset(weights / "base64.safetensors", "base64-tiny")
    save_preset(weights / "sr256.safetensors", "sr256-tiny", poison)
    save_preset(root / "overflowing" / "sr256.safetensors", "sr256-tiny", overflow)
    redis_server.client().flushdb()
    settings = Settings(
        redis_url=redis_server.url,
        store=str(root / "store"),
        torch_threads=1,
        heartbeat_interval=2,
        heartbeat_ttl=10,
        maintenance_interval=5,
        max_batch=1,
        weights_base64=str(weights / "base64.safetensors"),
        weights_sr256=str(weights / "sr256.safetensors"),
        weights_sr1024=str(weights / "sr1024.safetensors"),  # absent
    )
    rig = Rig(redis_server.client(), settings, None, root, weights, logs, {}, time.monotonic())  # type: ignore[arg-type]
    rig.start_worker("a", "base64,sr256")
    rig.start_worker("nothing", "sr1024")
    try:
        with TestClient(create_app(settings)) as client:
            rig.client = client
            for process in rig.processes.values():
                rig.wait_registered(process)
            yield rig
    finally:
        for process in rig.processes.values():
            if process.poll() is None:
                process.terminate()
        for process in rig.processes.values():
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()


def test_a_worker_listens_only_on_the_stages_that_loaded(rig: Rig):
    worker = rig.wait_registered(rig.processes["a"])
    assert worker.queue_names() == ["cascade-base64"]
    ready = rig.client.get("/readyz")
    assert ready.status_code == 503
    body = ready.json()
    assert "sr256: stage sr256: sr256.safetensors: 1 of " in body["error"]
    assert "NaN or infinite" in body["error"]
    assert body["detail"]["workers"] == {"base64": 1, "sr256": 0, "sr1024": 0}
    (report,) = body["detail"]["unloaded"]["sr256"]
    assert report["worker"] == worker.name and report["host"] == socket.gethostname()
    assert report["reason"].startswith("stage sr256: sr256.safetensors: 1 of ")
    assert str(rig.root) not in ready.text  # file names, never the host's folders


def test_a_job_needing_only_healthy_stages_runs_and_names_its_weights(rig: Rig):
    response = rig.generate(64)
    assert response.status_code == 202, response.text
    view = rig.wait_ended(response.json()["id"])
    assert view["status"] == "succeeded", view
    (stage,) = view["stages"]
    checkpoint = rig.weights / "base64.safetensors"
    expected = {"file": "base64.safetensors", "sha256": hashlib.sha256(checkpoint.read_bytes())}
    expected["sha256"] = expected["sha256"].hexdigest()
    assert stage["weights"] == expected
    assert stage["model"] == "base64.safetensors"
    assert stage["host"] == socket.gethostname()
    record = rig.root / "store" / view["id"] / "job.json"
    wait_for(record.exists, 10, "job.json")  # written a moment after the end polling sees
    stored = record.read_text()
    assert json.loads(stored)["weights"] == {"base64": {**expected, "host": socket.gethostname()}}
    assert str(rig.root) not in stored and str(rig.root) not in json.dumps(view)


def test_a_job_needing_a_stage_no_worker_could_load_is_refused(rig: Rig):
    response = rig.generate(256)
    assert response.status_code == 503, response.text
    assert response.headers["retry-after"] == str(rig.settings.worker_fresh_seconds)
    error = response.json()["error"]
    assert error.startswith("stage(s) sr256 cannot run: stage sr256: sr256.safetensors: ")
    assert "NaN or infinite" in error and str(rig.root) not in error
    assert stage_queue(rig.redis, "base64").count == 0  # nothing was queued


def test_a_worker_with_no_stage_loaded_keeps_reporting_until_stopped(rig: Rig):
    process = rig.processes["nothing"]
    # Past one freshness window since it started: it is still up, and its report still fresh.
    fresh = rig.settings.worker_fresh_seconds
    time.sleep(max(0.0, rig.started + fresh + 2 - time.monotonic()))
    assert process.poll() is None, "the worker exited instead of reporting"
    worker = rig.registration(process)
    assert worker is not None and worker.queue_names() == []
    body = rig.client.get("/readyz").json()
    (report,) = body["detail"]["unloaded"]["sr1024"]
    expected = "stage sr1024: no checkpoint file sr1024.safetensors (missing, or not a file)"
    assert report["reason"] == expected and report["worker"] == worker.name
    process.send_signal(signal.SIGTERM)
    assert process.wait(20) == 0
    body = rig.client.get("/readyz").json()
    assert "sr1024" not in body["detail"]["unloaded"]  # its registration went with it


def test_a_stage_whose_output_is_nan_fails_at_once_with_a_sentence(rig: Rig):
    overflowing = str(rig.root / "overflowing" / "sr256.safetensors")
    worker = rig.wait_registered(rig.start_worker("nan-output", "sr256", sr256=overflowing))
    assert worker.queue_names() == ["cascade-sr256"]
    assert rig.client.get("/readyz").json()["detail"]["workers"]["sr256"] == 1
    response = rig.generate(256)
    assert response.status_code == 202, response.text
    view = rig.wait_ended(response.json()["id"])
    assert view["status"] == "failed" and view["error"] == NAN_OUTPUT, view
    base, sr256 = view["stages"]
    assert base["status"] == "succeeded"
    assert sr256["status"] == "failed" and sr256["attempts"] == 1  # not retried
    assert sr256["error"] == "sr256 produced NaN: its weights or inputs are broken"
    assert rig.client.get(f"/v1/jobs/{view['id']}/result").status_code != 200
    assert not (rig.root / "store" / view["id"] / "result.png").exists()


def test_weights_that_do_not_load_on_a_stage_job_are_not_retried():
    """A plain `rq worker` loads a stage on its first job: a broken file fails it for good."""
    reason, transient = failure_reason("sr256", CheckpointError, 900)
    assert not transient
    assert reason == "the worker that took it could not load stage sr256's weights"
