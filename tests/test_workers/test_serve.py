"""`cascade serve` with nothing configured: embedded Redis, a worker and the API, one command;
a child SIGKILLed is restarted; SIGINT stops every process it started."""

from __future__ import annotations

import importlib
import os
import re
import signal
import subprocess
import time
import tomllib
from pathlib import Path

import httpx
import psutil
import pytest
from conftest import free_port, service_env

pytestmark = pytest.mark.service

CASCADE = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "cascade")


def poll(check, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if value := check():
                return value
        except httpx.TransportError:
            pass  # not listening yet
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def stopped(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_cascade_serve_runs_everything_and_stops_it(tmp_path: Path):
    port = free_port()
    env = service_env()
    env.update(
        CASCADE_STORE=str(tmp_path / "results"),
        CASCADE_EMBEDDED_REDIS=str(tmp_path / "redis" / "cascade.rdb"),
        CASCADE_TORCH_THREADS="1",
        CASCADE_STEPS_BASE64="2",
        CASCADE_HEARTBEAT_TTL="3",
        CASCADE_MAINTENANCE_INTERVAL="2",
        CASCADE_REDIS_BACKOFF_MAX="1",
        **{f"CASCADE_WEIGHTS_{name}": f"preset:{name.lower()}-tiny" for name in ("BASE64",)},
    )
    log_path = tmp_path / "serve.log"
    with open(log_path, "w") as log:
        serve = subprocess.Popen(
            [CASCADE, "serve", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10)
    try:
        poll(lambda: http.get("/readyz").status_code == 200, 60, "the service to be ready")
        children = [child.pid for child in psutil.Process(serve.pid).children(recursive=True)]
        assert len(children) >= 2  # the worker and the API
        redis_pid = int(re.search(r"embedded redis-server \(pid (\d+)\)", log_path.read_text())[1])
        response = http.post("/v1/generations", json={"class_name": "tabby", "size": 64})
        assert response.status_code == 202, response.text
        job_url = response.json()["links"]["self"]
        job = poll(
            lambda: (j := http.get(job_url).json())["status"] == "succeeded" and j, 30, "job"
        )
        assert http.get(job["result"]).headers["content-type"] == "image/png"
        assert (tmp_path / "results" / job["id"] / "result.png").is_file()
        assert (tmp_path / "redis" / "appendonly.aof").is_file()
        # Each child SIGKILLed in turn comes back; the service is ready again each time.
        for role in ("worker", "api", "redis"):
            before = child_pids(serve)
            os.kill(before[role], signal.SIGKILL)
            poll(
                lambda role=role, before=before: (
                    child_pids(serve).get(role) not in (None, before[role])
                ),
                60,
                f"{role} to be restarted",
            )
            poll(lambda: http.get("/readyz").status_code == 200, 90, f"ready after {role}")
            assert serve.poll() is None
        # The finished job survived the SIGKILL of Redis (append-only file), and new work runs.
        assert http.get(job_url).json()["status"] == "succeeded"
        again = http.post("/v1/generations", json={"class_name": "tabby", "size": 64})
        again_url = again.json()["links"]["self"]
        poll(lambda: http.get(again_url).json()["status"] == "succeeded", 60, "a new job")
        children = [child.pid for child in psutil.Process(serve.pid).children(recursive=True)]
    finally:
        serve.send_signal(signal.SIGINT)
        assert serve.wait(30) == 0
        http.close()
    for pid in [*children, redis_pid]:
        poll(lambda pid=pid: stopped(pid), 10, f"process {pid} to stop")
    text = log_path.read_text()
    assert f"cascade serving on http://127.0.0.1:{port}" in text
    assert "run RANDOM weights" in text
    for role in ("worker", "api", "redis"):
        assert re.search(rf"{role} \(pid \d+\) exited with code -9; restarting in", text), role


def child_pids(serve: subprocess.Popen) -> dict[str, int]:
    """The worker, API and redis-server processes `cascade serve` runs, by role."""
    roles = {}
    for child in psutil.Process(serve.pid).children():
        try:
            command = " ".join(child.cmdline())
        except psutil.Error:  # a zombie the supervisor has not reaped yet, or gone
            continue
        if "redis-server" in command:
            roles["redis"] = child.pid
        elif "uvicorn" in command:
            roles["api"] = child.pid
        elif "worker" in command:
            roles["worker"] = child.pid
    return roles


def test_every_subcommand_entry_point_resolves():
    """pyproject's `cascade.commands` entries name modules that exist here, `serve` among them
    (an installed copy's stale metadata would otherwise hide a renamed module)."""
    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    entries = pyproject["project"]["entry-points"]["cascade.commands"]
    assert entries["serve"] == "workers.serve:register"
    for name, target in entries.items():
        module, _, function = target.partition(":")
        assert callable(getattr(importlib.import_module(module), function)), name
