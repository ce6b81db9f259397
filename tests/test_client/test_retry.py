"""The client's retries and its event-stream fallbacks, against a small scripted HTTP server
on loopback (the answers the real service gives only under load or behind a proxy)."""

from __future__ import annotations

import asyncio
import email.utils
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import pytest

import cascade_client.async_client
import cascade_client.client
from cascade_client import APIError, AsyncClient, Client, RetryPolicy
from cascade_client.retry import retry_after

JOB = "a" * 32


def view(status: str) -> dict[str, object]:
    """A job view as the service sends it, cut to one stage."""
    base = f"/v1/jobs/{JOB}"
    return {
        "id": JOB,
        "kind": "generation",
        "status": status,
        "stage": None if status == "succeeded" else "base64",
        "progress": 1.0 if status == "succeeded" else 0.5,
        "eta_seconds": None,
        "error": None,
        "seed": 1,
        "request": {"class_id": 207},
        "output": {"height": 64, "width": 64},
        "stages": [
            {"name": "base64", "status": status, "step": 2, "steps": 4, "sampler": "ddim"}
            | {"height": 64, "width": 64, "attempts": 1, "queue_seconds": 0.25}
        ],
        "result": f"{base}/result" if status == "succeeded" else None,
        "links": {
            "self": base,
            "result": f"{base}/result",
            "cancel": base,
            "events": f"{base}/events",
            "stages": {"base64": f"{base}/stages/base64"},
        },
        "priority": "normal",  # a field this client does not know: kept in `extra`
    }


ACCEPTED = {
    "id": JOB,
    "status": "queued",
    "seed": 1,
    "stages": ["base64"],
    "links": view("queued")["links"],
}


@dataclass
class Answer:
    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


def json_answer(status: int, body: object, **headers: str) -> Answer:
    return Answer(
        status, json.dumps(body).encode(), {"Content-Type": "application/json", **headers}
    )


def sse(*events: tuple[str, str, object]) -> bytes:
    return b"".join(
        f": ping\r\nid: {id_}\nevent: {type_}\ndata: {json.dumps(data)}\n\n".encode()
        for id_, type_, data in events
    )


class Stub:
    """Answers each path with the next of its scripted answers (the last one repeats) and
    records every request: method, path, headers."""

    def __init__(self) -> None:
        self.script: dict[str, list[Answer]] = {}
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def answer(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                stub.requests.append((self.command, self.path, dict(self.headers.items())))
                answers = stub.script.get(f"{self.command} {self.path}") or [Answer(404)]
                answer = answers.pop(0) if len(answers) > 1 else answers[0]
                self.send_response(answer.status)
                for name, value in answer.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(answer.body)))
                self.end_headers()
                self.wfile.write(answer.body)

            do_GET = do_POST = do_DELETE = answer  # noqa: N815 (http.server's naming)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def seen(self, method: str, path: str) -> list[dict[str, str]]:
        return [headers for m, p, headers in self.requests if (m, p) == (method, path)]


@pytest.fixture
def stub() -> Iterator[Stub]:
    stub = Stub()
    yield stub
    stub.server.shutdown()


@pytest.fixture
def delays(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The client's waits, recorded instead of slept."""
    waited: list[float] = []

    async def async_sleep(seconds: float) -> None:
        waited.append(seconds)

    monkeypatch.setattr(cascade_client.client, "sleep", waited.append)
    monkeypatch.setattr(cascade_client.async_client, "sleep", async_sleep)
    return waited


def test_delays_follow_retry_after_capped_and_bounded():
    policy = RetryPolicy(retries=3, backoff=0.5, max_delay=10)
    answer = httpx.Response(503, headers={"Retry-After": "4"})
    assert [policy.delay(attempt, answer) for attempt in range(4)] == [4, 4, 4, None]
    assert policy.delay(0, httpx.Response(429, headers={"Retry-After": "120"})) == 10
    assert [policy.delay(attempt, httpx.Response(503)) for attempt in range(3)] == [0.5, 1, 2]
    assert [policy.delay(attempt, None) for attempt in range(3)] == [0.5, 1, 2]  # network
    assert policy.delay(0, httpx.Response(500)) is None
    assert policy.delay(0, httpx.Response(422)) is None
    now = time.time()
    date = email.utils.formatdate(now + 7, usegmt=True)
    assert retry_after(httpx.Response(429, headers={"Retry-After": date}), now) == pytest.approx(
        7, abs=1
    )
    assert retry_after(httpx.Response(429, headers={"Retry-After": "soon"})) is None


def test_a_post_retried_after_503_and_429_keeps_its_idempotency_key(stub: Stub, delays):
    stub.script["POST /v1/generations"] = [
        json_answer(503, {"error": "the job queue (Redis) is unavailable"}, **{"Retry-After": "2"}),
        json_answer(429, {"error": "rate limit"}, **{"Retry-After": "1"}),
        json_answer(202, ACCEPTED),
    ]
    with Client(stub.url, api_key="k") as client:
        accepted = client.generate(207, size=64)
    assert accepted.id == JOB and accepted.links.events == f"/v1/jobs/{JOB}/events"
    assert delays == [2.0, 1.0]
    sent = stub.seen("POST", "/v1/generations")
    keys = {headers["Idempotency-Key"] for headers in sent}
    assert len(sent) == 3 and len(keys) == 1 and len(keys.pop()) == 32
    assert {headers["Authorization"] for headers in sent} == {"Bearer k"}


def test_retries_end_with_the_services_error(stub: Stub, delays):
    stub.script[f"GET /v1/jobs/{JOB}"] = [
        json_answer(503, {"error": "the job queue (Redis) is unavailable"}, **{"Retry-After": "3"})
    ]
    with Client(stub.url, retry=RetryPolicy(retries=2)) as client, pytest.raises(APIError) as err:
        client.get(JOB)
    assert (err.value.status_code, err.value.retry_after) == (503, 3.0)
    assert "Redis" in err.value.error
    assert delays == [3.0, 3.0] and len(stub.seen("GET", f"/v1/jobs/{JOB}")) == 3


def test_no_retry_on_a_bad_request(stub: Stub, delays):
    stub.script["POST /v1/upscales"] = [json_answer(415, {"error": "not an image"})]
    with Client(stub.url) as client, pytest.raises(APIError) as err:
        client.upscale(b"text", 4)
    assert err.value.status_code == 415 and delays == []
    assert len(stub.seen("POST", "/v1/upscales")) == 1


def test_async_retries_too(stub: Stub, delays):
    stub.script["POST /v1/upscales"] = [
        json_answer(503, {"error": "queue full"}, **{"Retry-After": "5"}),
        json_answer(202, ACCEPTED),
    ]

    async def run() -> str:
        async with AsyncClient(stub.url) as client:
            return (await client.upscale(b"\x89PNG\r\n\x1a\n....", 4)).id

    assert asyncio.run(run()) == JOB and delays == [5.0]
    sent = stub.seen("POST", "/v1/upscales")
    assert len({headers["Idempotency-Key"] for headers in sent}) == 1 and len(sent) == 2


def test_a_broken_stream_resumes_after_its_last_event(stub: Stub, delays):
    events = f"GET /v1/jobs/{JOB}/events"
    stream = {"Content-Type": "text/event-stream"}
    stub.script[events] = [
        Answer(200, sse(("1-0", "queued", view("queued"))), stream),  # then closed early
        Answer(
            200,
            sse(("2-0", "progress", {"step": 2}), ("3-0", "succeeded", view("succeeded"))),
            stream,
        ),
    ]
    seen: list[str] = []
    with Client(stub.url) as client:
        job = client.wait(JOB, timeout=30, on_event=lambda event: seen.append(event.id))
    assert job.status == "succeeded" and seen == ["1-0", "2-0", "3-0"]
    assert job.stages[0].extra == {"queue_seconds": 0.25} and job.extra == {"priority": "normal"}
    resumed = [
        headers.get("Last-Event-ID") for headers in stub.seen("GET", f"/v1/jobs/{JOB}/events")
    ]
    assert resumed == [None, "1-0"]


@pytest.mark.parametrize(
    "answer",
    [Answer(200, b"<html>buffered by a proxy</html>", {"Content-Type": "text/html"}), Answer(502)],
)
def test_no_stream_falls_back_to_polling(stub: Stub, delays, answer: Answer):
    stub.script[f"GET /v1/jobs/{JOB}/events"] = [answer]
    stub.script[f"GET /v1/jobs/{JOB}"] = [
        json_answer(200, view("running")),
        json_answer(200, view("running")),
        json_answer(200, view("succeeded")),
    ]
    with Client(stub.url) as client:
        job = client.wait(JOB, timeout=30, poll_interval=0.25)
    assert job.status == "succeeded" and delays == [0.25, 0.25]
    assert len(stub.seen("GET", f"/v1/jobs/{JOB}")) == 3
