"""The webhook sender (`python -m jobs.sender`) against a real Redis and real receivers on
loopback: concurrent delivery within the pool and per-destination limits, retries with backoff,
the total deadline, signing, refusal at send time, and a killed sender losing and repeating
nothing it had finished."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import wait_for
from rq import Queue
from rq.serializers import JSONSerializer
from standardwebhooks.webhooks import Webhook

from jobs.connection import EmbeddedRedis
from jobs.events import EventLog
from jobs.sender import adopt_rq_deliveries
from jobs.settings import Settings
from jobs.stats import WEBHOOK_OUTCOMES, read_webhooks
from jobs.webhooks import DeliveryQueue, enqueue_delivery

SECRET = "whsec_" + "c2VjcmV0LXNpZ25pbmcta2V5LWZvci10ZXN0cw=="  # base64 of a test key


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers each request as `answer(n)` says (n counts
    requests from 1): an HTTP status, "hang" (never answer), "slow" (204 after 1.5 s) or "drip"
    (a byte a second)."""

    def __init__(self, answer: Callable[[int], int | str]):
        self.answer = answer
        self.received: list[tuple[float, dict[str, str], bytes]] = []
        self.requests = 0
        self.times: list[float] = []  # when each request had been read
        self.open = 0  # connections open now
        self.most_open = 0
        self.lock = threading.Lock()
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}/hook"
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                connection, _ = self.server.accept()
            except OSError:
                return
            with self.lock:
                self.open += 1
                self.most_open = max(self.most_open, self.open)
            threading.Thread(target=self._handle, args=(connection,), daemon=True).start()

    def _handle(self, connection: socket.socket) -> None:
        try:
            headers, body = read_request(connection)
            with self.lock:
                self.requests += 1
                self.times.append(time.monotonic())
                answer = self.answer(self.requests)
            if answer == "hang":
                while connection.recv(65536):  # until the sender gives up and closes
                    pass
            elif answer == "slow":
                time.sleep(1.5)
                with self.lock:
                    self.received.append((time.monotonic(), headers, body))
                connection.sendall(b"HTTP/1.1 204 X\r\nContent-Length: 0\r\n\r\n")
            elif answer == "drip":
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 100:
                    connection.sendall(bytes([byte]))
                    time.sleep(1)
            else:
                with self.lock:
                    self.received.append((time.monotonic(), headers, body))
                connection.sendall(f"HTTP/1.1 {answer} X\r\nContent-Length: 0\r\n\r\n".encode())
        except OSError:
            pass
        finally:
            connection.close()
            with self.lock:
                self.open -= 1

    def job_ids(self) -> list[str]:
        return [json.loads(body)["id"] for _, _, body in self.received]

    def close(self) -> None:
        self.server.close()


def read_request(connection: socket.socket) -> tuple[dict[str, str], bytes]:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        if not chunk:
            raise OSError("closed before the request ended")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")[1:]
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    while len(body) < int(headers.get("content-length", 0)):
        body += connection.recv(65536)
    return headers, body


class Senders:
    """Starts `python -m jobs.sender` processes with the test's settings, and ends them."""

    def __init__(self, redis: EmbeddedRedis, root: Path):
        self.redis = redis
        self.root = root
        self.processes: list[subprocess.Popen] = []

    def start(self, **settings: object) -> subprocess.Popen:
        env = {key: value for key, value in os.environ.items() if not key.startswith("CASCADE_")}
        settings = {"redis_url": self.redis.url, "webhook_allow": "127.0.0.1", **settings}
        env |= {f"CASCADE_{name.upper()}": str(value) for name, value in settings.items()}
        log = self.root / f"sender-{len(self.processes)}.log"
        process = subprocess.Popen(
            [sys.executable, "-m", "jobs.sender"],
            env=env,
            stdout=log.open("w"),
            stderr=subprocess.STDOUT,
        )
        self.processes.append(process)
        wait_for(lambda: "listening" in log.read_text(), 60, "the sender to listen")
        return process

    def log(self) -> str:
        return "".join(path.read_text() for path in sorted(self.root.glob("sender-*.log")))

    def stop_all(self) -> None:
        for process in self.processes:
            if process.poll() is None:
                process.kill()
            process.wait(10)


@pytest.fixture
def senders(redis_server: EmbeddedRedis, tmp_path: Path) -> Iterator[Senders]:
    redis_server.client().flushdb()
    started = Senders(redis_server, tmp_path)
    yield started
    started.stop_all()


def ended(redis: EmbeddedRedis, job_id: str) -> str:
    """A job that has ended: its terminal event in its log (what the webhook posts)."""
    data = {"id": job_id, "status": "succeeded"}
    EventLog(redis.client(), 3600).append(
        f"cascade:job:{job_id}", job_id, "succeeded", data, while_active=False
    )
    return job_id


def test_hanging_receivers_do_not_delay_another_receivers_webhook(
    redis_server: EmbeddedRedis, senders: Senders
):
    senders.start(webhook_concurrency=16, webhook_per_destination=4)
    connection = redis_server.client()
    enqueuer = Settings(webhook_timeout=30, webhook_retries=0)  # nobody is cut during the test
    hanging = [Receiver(lambda n: "hang") for _ in range(4)]
    answering = Receiver(lambda n: 204)
    try:
        # One key's 20 jobs to the first hanging receiver, one job each to the other three.
        for index in range(20):
            enqueue_delivery(
                connection, enqueuer, ended(redis_server, f"flood{index}"), hanging[0].url
            )
        for index, receiver in enumerate(hanging[1:]):
            enqueue_delivery(
                connection, enqueuer, ended(redis_server, f"hang{index}"), receiver.url
            )
        wait_for(
            lambda: hanging[0].requests == 4 and all(r.requests == 1 for r in hanging[1:]),
            20,
            "the hanging receivers to hold their attempts",
        )
        submitted = time.monotonic()
        enqueue_delivery(connection, enqueuer, ended(redis_server, "answered"), answering.url)
        wait_for(lambda: answering.received, 10, "the answering receiver's webhook")
        arrived = answering.received[0][0] - submitted
        assert arrived < 2.0, f"the webhook arrived {arrived:.2f} s after its submission"
        assert answering.job_ids() == ["answered"]
        time.sleep(0.5)  # the per-destination limit still holds the flood back
        assert hanging[0].most_open == 4 and hanging[0].requests == 4
        status = DeliveryQueue(connection, enqueuer).status
        assert status("answered")["status"] == "delivered"
        assert status("flood0")["status"] == "sending" and status("flood19")["status"] == "queued"
    finally:
        for receiver in [*hanging, answering]:
            receiver.close()


def test_retries_deadline_signing_and_refusal(redis_server: EmbeddedRedis, senders: Senders):
    senders.start(webhook_secret=SECRET)
    connection = redis_server.client()
    enqueuer = Settings(webhook_timeout=2, webhook_retries=1)
    flaky = Receiver(lambda n: 500 if n == 1 else 204)
    dripping = Receiver(lambda n: "drip")
    rejecting = Receiver(lambda n: 404)
    busy = Receiver(lambda n: 429)
    elsewhere = "http://127.0.0.2:9/hook"  # loopback, but not the allowed 127.0.0.1
    receivers = [flaky, dripping, rejecting, busy]
    before = read_webhooks(connection)
    try:
        for name, url in [("flaky", flaky.url), ("dripping", dripping.url)] + [
            ("rejecting", rejecting.url),
            ("busy", busy.url),
            ("elsewhere", elsewhere),
        ]:
            enqueue_delivery(connection, enqueuer, ended(redis_server, name), url)
        queue = DeliveryQueue(connection, enqueuer)
        done = ("delivered", "failed", "refused")
        wait_for(
            lambda: all(
                queue.status(name).get("status") in done
                for name in ("flaky", "dripping", "rejecting", "busy", "elsewhere")
            ),
            30,
            "every delivery to end",
        )
        # A 500 is retried once, after the first backoff (2 s), and the retry is signed.
        assert flaky.requests == 2 and queue.status("flaky")["status"] == "delivered"
        assert flaky.times[1] - flaky.times[0] >= 2.0
        _, headers, body = flaky.received[0]
        assert json.loads(body) == {"id": "flaky", "status": "succeeded"}
        Webhook(SECRET).verify(body, headers)  # raises on a bad signature
        # A 429 is retried too; the retry fails again and the delivery gives up.
        assert busy.requests == 2
        assert queue.status("busy")["status"] == "failed"
        assert queue.status("busy")["error"] == "HTTP 429"
        # A receiver that drips its answer is cut at the deadline, on both attempts.
        assert dripping.requests == 2
        assert queue.status("dripping")["error"] == "no answer within the 2 s deadline"
        # A 404 is an answer: not retried.
        assert rejecting.requests == 1 and queue.status("rejecting")["status"] == "delivered"
        # Refused at send time, never retried.
        assert queue.status("elsewhere")["status"] == "refused"
        assert "internal address (127.0.0.2)" in queue.status("elsewhere")["error"]
        # /metrics' delivery counters: each attempt counted once by its outcome (a delivery's
        # counter, then its log line, follow its status by a moment).
        expected = {"sent": 2, "failed": 3, "gave_up": 2, "refused": 1, "skipped": 0}

        def counted() -> dict[str, int]:
            after = read_webhooks(connection)
            return {name: after.get(name, 0) - before.get(name, 0) for name in WEBHOOK_OUTCOMES}

        wait_for(lambda: counted() == expected, 10, "the delivery counters")
        assert counted() == expected
        giving_up = "webhook for job busy failed (HTTP 429); giving up after 2 attempts"
        wait_for(lambda: giving_up in senders.log(), 10, "the sender's log")
        assert "webhook for job flaky failed (HTTP 500); retrying" in senders.log()
    finally:
        for receiver in receivers:
            receiver.close()


def test_a_killed_sender_loses_nothing_and_repeats_only_its_interrupted_attempt(
    redis_server: EmbeddedRedis, senders: Senders
):
    fast = {"heartbeat_interval": 1, "heartbeat_ttl": 2}  # claims lapse 2 s after a kill
    first = senders.start(**fast)
    connection = redis_server.client()
    enqueuer = Settings(webhook_timeout=30, webhook_retries=2)
    answering = Receiver(lambda n: 204)
    hang_once = Receiver(lambda n: "hang" if n == 1 else 204)
    try:
        for index in range(3):
            enqueue_delivery(
                connection, enqueuer, ended(redis_server, f"before{index}"), answering.url
            )
        enqueue_delivery(connection, enqueuer, ended(redis_server, "interrupted"), hang_once.url)
        wait_for(lambda: len(answering.received) == 3 and hang_once.requests == 1, 20, "sends")
        time.sleep(1.5)  # at least one renewal of the interrupted attempt's claim
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        for index in range(3):  # queued while no sender runs
            enqueue_delivery(
                connection, enqueuer, ended(redis_server, f"after{index}"), answering.url
            )
        senders.start(**fast)
        wait_for(lambda: len(answering.received) == 6, 20, "the deliveries queued meanwhile")
        wait_for(lambda: hang_once.received, 20, "the interrupted attempt's retry")
        time.sleep(1.0)  # room for a wrong second delivery to show up
        expected = [f"before{index}" for index in range(3)] + [
            f"after{index}" for index in range(3)
        ]
        assert sorted(answering.job_ids()) == sorted(expected)  # each exactly once
        assert hang_once.requests == 2 and hang_once.job_ids() == ["interrupted"]
        queue = DeliveryQueue(connection, enqueuer)
        assert queue.status("interrupted")["attempts"] == "2"
        assert all(queue.status(job_id)["status"] == "delivered" for job_id in expected)
        assert "job interrupted: its sender stopped during the attempt; retrying" in senders.log()
    finally:
        answering.close()
        hang_once.close()


def test_a_duplicate_delivery_is_ignored(redis_server: EmbeddedRedis):
    redis_server.client().flushdb()
    connection = redis_server.client()
    settings = Settings(webhook_retries=1)
    enqueue_delivery(connection, settings, "twice", "http://127.0.0.1:9/a")
    enqueue_delivery(connection, settings, "twice", "http://127.0.0.1:9/b")
    assert connection.zcard("cascade:webhooks:due") == 1
    assert DeliveryQueue(connection, settings).status("twice")["url"] == "http://127.0.0.1:9/a"


def test_deliveries_queued_through_rq_are_taken_over(redis_server: EmbeddedRedis):
    redis_server.client().flushdb()
    connection = redis_server.client()
    queue = Queue("cascade-webhooks", connection=connection, serializer=JSONSerializer)
    url = "http://127.0.0.1:9/hook"
    queue.enqueue("jobs.webhooks.deliver", "waiting", url, job_id="waiting-webhook")
    queue.enqueue_in(timedelta(seconds=30), "jobs.webhooks.deliver", "retrying", url)
    assert adopt_rq_deliveries(connection, Settings()) == 2
    assert queue.count == 0 and queue.scheduled_job_registry.count == 0
    records = DeliveryQueue(connection, Settings()).status
    assert [(records(job)["status"], records(job)["url"]) for job in ("waiting", "retrying")] == [
        ("queued", url),
        ("queued", url),
    ]
    assert adopt_rq_deliveries(connection, Settings()) == 0  # once


def test_sigterm_stops_an_idle_sender_at_once(senders: Senders):
    process = senders.start()
    started = time.monotonic()
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    assert time.monotonic() - started < 5
    assert "webhook sender stopping" in senders.log()


def test_sigterm_lets_the_attempt_in_flight_end(redis_server: EmbeddedRedis, senders: Senders):
    process = senders.start()
    connection = redis_server.client()
    slow = Receiver(lambda n: "slow")
    try:
        enqueue_delivery(connection, Settings(), ended(redis_server, "slow"), slow.url)
        wait_for(lambda: slow.requests == 1, 20, "the attempt to start")
        process.send_signal(signal.SIGTERM)
        assert process.wait(10) == 0
        assert slow.job_ids() == ["slow"]
        assert DeliveryQueue(connection, Settings()).status("slow")["status"] == "delivered"
    finally:
        slow.close()
