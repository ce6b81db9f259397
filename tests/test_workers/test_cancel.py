"""Cancelling a job through the API while its stage is queued, just claimed by a worker, or
running (the worker's stage code in-process, tiny presets, a real embedded Redis): the terminal
event, the job polled afterwards and the webhook's payload say the same thing, no stage is left
running, and progress never goes backwards."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import torch
from conftest import wait_for
from fastapi.testclient import TestClient

from api.main import create_app
from cascade.stages import StageRun
from jobs.connection import EmbeddedRedis
from jobs.plan import PlannedStage
from jobs.record import NewJob, tensor_key
from jobs.sender import deliver_pending
from jobs.settings import Settings, get_settings
from jobs.store import RECORD, object_name
from workers import runtime as runtime_module
from workers.runtime import Runtime
from workers.stage import run_stage

TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}


class Receiver(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        Receiver.received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@dataclass
class Rig:
    runtime: Runtime
    client: TestClient
    hook: str  # the receiver's URL


@pytest.fixture
def rig(
    redis_server: EmbeddedRedis, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Rig]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("CASCADE_WEBHOOK_ALLOW", "127.0.0.1")  # the receiver below is local
    get_settings.cache_clear()
    redis_server.client().flushdb()
    settings = Settings(redis_url=redis_server.url, store=str(tmp_path), retries=1, **TINY)
    runtime = Runtime(settings, redis_server.client())
    runtime_module.install(runtime)
    server = HTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    Receiver.received = []
    try:
        with TestClient(create_app(settings)) as client:
            yield Rig(runtime, client, f"http://127.0.0.1:{server.server_port}/hook")
    finally:
        server.shutdown()
        runtime_module.install(None)  # type: ignore[arg-type]
        torch.set_num_threads(threads)
        get_settings.cache_clear()


def new_job(rig: Rig, steps: int = 2) -> str:
    plan = [
        PlannedStage("base64", 64, 64, StageRun("ddim", steps)),
        PlannedStage("sr256", 256, 256, StageRun("ddim", 2)),
    ]
    job = NewJob(
        uuid.uuid4().hex, "generation", {"class_id": 1}, 11, plan, (256, 256), webhook_url=rig.hook
    )
    rig.runtime.jobs.create(job)
    return job.id


def cancel(rig: Rig, job_id: str) -> dict:
    response = rig.client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 202, response.text
    return response.json()


def check_the_end_agrees(rig: Rig, job_id: str, answer: dict) -> dict:
    """The cancel's answer, the terminal event, the polled job, job.json and the webhook's
    payload are one view; no stage of it is running and no hand-off tensor is left."""
    runtime = rig.runtime
    end = runtime.jobs.events.last(job_id)
    assert end is not None and end.type == "canceled"
    polled = rig.client.get(f"/v1/jobs/{job_id}").json()
    deliver_pending(runtime.connection, runtime.settings)
    assert len(Receiver.received) == 1
    assert answer == end.data == polled == Receiver.received[0]
    assert polled["status"] == "canceled" and polled["stage"] is None
    assert all(stage["status"] == "canceled" for stage in polled["stages"])
    stored = json.loads(runtime.store.get(object_name(job_id, RECORD)))
    assert stored["status"] == "canceled" and stored["stages"] == polled["stages"]
    assert set(stored["weights"]) == {"base64", "sr256"}  # the API ended it: no torch named
    for name in ("input", "base64", "sr256"):
        assert not runtime.connection.exists(tensor_key(job_id, name))
    events = runtime.jobs.events.read(job_id)
    progress = [event.data["progress"] for event in events if event.type == "progress"]
    assert progress == sorted(progress) and all(value <= polled["progress"] for value in progress)
    return polled


def test_cancel_of_a_queued_job(rig: Rig):
    job_id = new_job(rig)
    answer = cancel(rig, job_id)
    run_stage(job_id, "base64")  # a worker takes the stage job up afterwards: it runs nothing
    polled = check_the_end_agrees(rig, job_id, answer)
    assert polled["progress"] == 0.0
    assert [stage["attempts"] for stage in polled["stages"]] == [0, 0]


def test_cancel_of_a_just_claimed_stage(rig: Rig, monkeypatch: pytest.MonkeyPatch):
    """The cancel arrives after a worker took the stage job, before it marked the stage
    running."""
    job_id = new_job(rig)
    jobs = rig.runtime.jobs
    start = jobs.stage_started
    answers: list[dict] = []

    def cancel_first(*args: object) -> int:
        answers.append(cancel(rig, job_id))
        return start(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(jobs, "stage_started", cancel_first)
    run_stage(job_id, "base64")
    polled = check_the_end_agrees(rig, job_id, answers[0])
    assert polled["stages"][0]["attempts"] == 0 and polled["progress"] == 0.0


def test_cancel_of_a_running_stage(rig: Rig):
    job_id = new_job(rig, steps=1000)  # tiny, but far longer than the cancel takes
    jobs = rig.runtime.jobs
    worker = threading.Thread(target=run_stage, args=(job_id, "base64"))
    worker.start()
    try:
        wait_for(lambda: int(jobs.get(job_id).stage("base64", "step") or 0) >= 2, 60, "steps")
        answer = cancel(rig, job_id)
    finally:
        worker.join(60)
    assert not worker.is_alive()
    polled = check_the_end_agrees(rig, job_id, answer)
    base = polled["stages"][0]
    assert base["status"] == "canceled" and 2 <= base["step"] < 1000
    assert polled["progress"] > 0  # the steps it made still count
