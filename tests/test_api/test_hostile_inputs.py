"""Hostile input against the API on a real (embedded) Redis, in-process and under a real
uvicorn: lone surrogates, numbers too long to read, ids that name other Redis keys, event ids
past Redis's range or past the log's end, and line breaks meant to forge log lines. Every one
gets a 4xx that says what was wrong (never a 5xx), and the connection stays usable."""

from __future__ import annotations

import io
import os
import socket
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import free_port, wait_for, wait_listening
from PIL import Image

from api.main import create_app
from jobs.connection import EmbeddedRedis
from jobs.lifecycle import Jobs
from jobs.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]
JSON = {"content-type": "application/json"}
BIGGEST = 2**64 - 1  # each part of a Redis stream id is an unsigned 64-bit integer
HUGE = "1" * 5000  # past Python's 4300-digit limit on reading integers


@pytest.fixture(scope="module")
def settings(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(redis_url=redis_server.url, store=str(tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@pytest.fixture
def jobs(redis_server: EmbeddedRedis, settings: Settings) -> Jobs:
    return Jobs(redis_server.client(), settings.result_ttl)


def png() -> bytes:
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (16, 16, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def multipart(fields: list[tuple[bytes, bytes]], filename: bytes = b"in.png") -> bytes:
    """A multipart body with these (name, text) fields and a PNG `file` part, raw bytes."""
    parts = [
        b'--x\r\nContent-Disposition: form-data; name="' + name + b'"\r\n\r\n' + value + b"\r\n"
        for name, value in fields
    ]
    parts.append(
        b'--x\r\nContent-Disposition: form-data; name="file"; filename="' + filename + b'"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png() + b"\r\n"
    )
    return b"".join(parts) + b"--x--\r\n"


def submit(client: TestClient) -> str:
    response = client.post("/v1/generations", json={"class_id": 1, "size": 64})
    assert response.status_code == 202, response.text
    return response.json()["id"]


def assert_422(response, *words: str) -> str:
    assert response.status_code == 422, (response.status_code, response.text)
    error = response.json()["error"]
    for word in words:
        assert word in error, error
    return error


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b'{"class_name": "\\ud800"}', "class_name"),
        (b'{"class_name": "tab\\udfffby"}', "class_name"),
        (b'{"\\ud800": 1, "class_id": 1}', "field name '\\ud800'"),
        (b'{"class_id": 1, "webhook_url": "https://example.com/\\ud800"}', "webhook_url"),
        (b'{"class_id": 1, "webhook_url": "https://ex\\udc00ample.com/"}', "webhook_url"),
        (b'["\\ud800"]', "0"),
        # The same surrogate as raw bytes: json.loads on bytes would let it through.
        (b'{"class_name": "\xed\xa0\x80"}', "byte 16"),
    ],
)
def test_lone_surrogates_in_json_are_a_422(client: TestClient, body: bytes, field: str):
    error = assert_422(client.post("/v1/generations", content=body, headers=JSON), field)
    assert "surrogate" in error or "not utf-8 text" in error


@pytest.mark.parametrize(
    ("charset", "fields", "filename", "field"),
    [
        # A part's decoder comes from the charset parameter; these two make lone surrogates.
        ("unicode_escape", [(b"sampler", b"\\ud800")], b"in.png", "sampler"),
        ("utf-7", [(b"color_fix", b"+2AA-")], b"in.png", "color_fix"),
        ("unicode_escape", [(b"\\ud800", b"4")], b"in.png", "field name"),
        ("unicode_escape", [(b"scale", b"4")], b"\\udc80.png", "file name"),
    ],
)
def test_lone_surrogates_in_form_fields_are_a_422(
    client: TestClient, charset: str, fields: list, filename: bytes, field: str
):
    headers = {"content-type": f"multipart/form-data; boundary=x; charset={charset}"}
    response = client.post("/v1/upscales", content=multipart(fields, filename), headers=headers)
    assert "surrogate" in assert_422(response, field)


@pytest.mark.parametrize("field", ["class_id", "seed", "steps", "guidance"])
def test_a_5000_digit_json_number_is_a_422_naming_its_field(client: TestClient, field: str):
    body = {"class_id": 1, field: 0}
    text = str(body).replace("'", '"').replace(f'"{field}": 0', f'"{field}": {HUGE}')
    assert_422(client.post("/v1/generations", content=text, headers=JSON), field)


@pytest.mark.parametrize("field", ["scale", "target_size", "seed", "steps", "fidelity", "class_id"])
def test_a_5000_digit_form_number_is_a_422_naming_its_field(client: TestClient, field: str):
    files = {"file": ("in.png", png(), "image/png")}
    assert_422(client.post("/v1/upscales", data={field: HUGE}, files=files), field)


def test_a_5000_digit_content_length_is_a_413(client: TestClient):
    request = client.build_request("POST", "/v1/generations", content=b'{"class_id": 1}')
    request.headers.update({"content-type": "application/json", "content-length": HUGE})
    response = client.send(request)
    assert response.status_code == 413, response.text
    assert "5000-digit length" in response.json()["error"]


def test_bodies_json_cannot_read_are_a_422_not_a_400(client: TestClient):
    # schemathesis found the first: a body that is not UTF-8 was an undocumented 400.
    not_utf8 = client.post("/v1/generations", content=b"\x80", headers=JSON)
    assert_422(not_utf8, "not valid JSON", "not utf-8 text")
    nested = b"[" * 20_000 + b"]" * 20_000  # within the body limit, past the parser's depth
    assert_422(client.post("/v1/generations", content=nested, headers=JSON), "nested too deeply")


def test_job_ids_outside_the_id_alphabet_are_404_before_redis(
    client: TestClient, redis_server: EmbeddedRedis
):
    job_id = submit(client)
    connection = redis_server.client()

    def commands() -> int:
        stats = connection.info("commandstats")
        return sum(value["calls"] for name, value in stats.items() if name != "cmdstat_info")

    before = commands()
    # `<id>:events` is the job's event stream: asking it for the record's fields was a
    # WRONGTYPE error answered 503.
    for path in (
        f"/v1/jobs/{job_id}:events",
        f"/v1/jobs/{job_id}:events/events",
        f"/v1/jobs/{job_id.upper()}",
        f"/v1/jobs/{job_id}x/result",
        "/v1/jobs/*/stages/base64",
    ):
        for method in ("GET", "DELETE") if path.count("/") == 3 else ("GET",):
            response = client.request(method, path)
            assert response.status_code == 404, (method, path, response.text)
            assert response.json()["error"].startswith("no job ")
    assert commands() - before <= 1  # the one INFO above counts itself only once it ran
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200  # the real id still works


@pytest.mark.parametrize(
    "bad",
    [
        f"{BIGGEST + 1}-0",
        f"0-{BIGGEST + 1}",
        "99999999999999999999-0",  # 20 digits, the old pattern's limit, past 2**64
        "١٢٣-0",  # digits, but not ASCII ones: Redis reads none other
        "1-0\n2-0",
    ],
)
def test_event_ids_past_redis_range_are_a_422(client: TestClient, bad: str):
    job_id = submit(client)
    by_query = client.get(f"/v1/jobs/{job_id}/events", params={"after": bad})
    assert_422(by_query, "not an event id", str(BIGGEST))
    if bad.isascii() and "\n" not in bad:  # header values are Latin-1, on one line
        by_header = client.get(f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": bad})
        assert_422(by_header, "not an event id")


def test_the_largest_event_id_is_accepted(client: TestClient):
    job_id = submit(client)
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 202
    largest = f"{BIGGEST}-{BIGGEST}"
    # Past the canceled job's last event: nothing more to send, 204 (not a Redis error).
    assert client.get(f"/v1/jobs/{job_id}/events", params={"after": largest}).status_code == 204


def test_resuming_past_the_end_of_a_running_log_ends_with_the_terminal_event(
    client: TestClient, jobs: Jobs
):
    job_id = submit(client)
    future = f"{int(time.time() * 1000) + 10**9}-0"  # ids of events yet to come are smaller

    def worker() -> None:
        time.sleep(0.5)  # the client is already waiting on the stream
        jobs.stage_started(job_id, "base64", {"model": "tiny"}, "worker-1")
        jobs.stage_ended(job_id, "base64", "succeeded")
        jobs.end(job_id, "succeeded")

    thread = threading.Thread(target=worker)
    thread.start()
    started = time.monotonic()
    seen = []
    with client.stream(
        "GET", f"/v1/jobs/{job_id}/events", headers={"Last-Event-ID": future}
    ) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("event:"):
                seen.append(line.split(":", 1)[1].strip())
    thread.join()
    assert seen == ["succeeded"]  # not the replay, not the events it claims to have
    assert time.monotonic() - started < 20  # ended by the terminal event (it pinged forever)


def test_errors_echo_hostile_text_as_ascii_json(client: TestClient):
    response = client.post("/v1/generations", json={"class_id": 1, "\x1b[2J": 1})
    assert response.status_code == 422
    assert response.content.isascii() and b"\x1b" not in response.content
    assert "unknown field" in response.json()["error"]


@pytest.fixture(scope="module")
def server(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory):
    """uvicorn serving the API in its own process, as deployed: (port, its log file)."""
    root = tmp_path_factory.mktemp("uvicorn")
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CASCADE_REDIS_URL": redis_server.url,
        "CASCADE_STORE": str(root / "store"),
    }
    log = root / "api.log"
    command = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"]
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*command, "--port", str(port)], env=env, cwd=REPO, stdout=output, stderr=output
        )
    try:
        wait_listening(port, process, 60, "uvicorn")
        yield port, log
    finally:
        process.terminate()
        process.wait(10)


def exchange(connection: socket.socket, request: bytes) -> tuple[int, bytes]:
    """Send one request on a kept-alive connection; (status, body) of its answer."""
    connection.sendall(request)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = connection.recv(65536)
        assert chunk, "the server closed the connection"
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    length = next(
        int(line.split(":", 1)[1]) for line in lines if line.lower().startswith("content-length")
    )
    while len(body) < length:
        chunk = connection.recv(65536)
        assert chunk, "the server closed the connection"
        body += chunk
    return int(lines[0].split()[1]), body


def post(path: str, content_type: str, body: bytes) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body


def test_surrogates_keep_the_connection_alive(server):
    port, _ = server
    healthz = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    hostile = [
        post("/v1/generations", "application/json", b'{"class_name": "\\ud800"}'),
        post("/v1/generations", "application/json", b'{"\\ud800": 1}'),
        post(
            "/v1/generations",
            "application/json",
            b'{"class_id": 1, "seed": ' + HUGE.encode() + b"}",
        ),
        post(
            "/v1/upscales",
            "multipart/form-data; boundary=x; charset=unicode_escape",
            multipart([(b"sampler", b"\\ud800")]),
        ),
    ]
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        for request in hostile:
            status, body = exchange(connection, request)
            assert status == 422, body
            assert exchange(connection, healthz)[0] == 200  # the same connection, still open


def test_a_line_break_in_a_path_forges_no_log_line(server):
    port, log = server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        for path in ("/foo%0aFORGED", "/v1/jobs/x%0d%0aFORGED%20line", "/v1/jobs/%1b[31mFORGED"):
            request = f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode()
            assert exchange(connection, request)[0] == 404
    # The access line is written after the answer.
    wait_for(lambda: "/foo\\nFORGED" in log.read_text(), 10, "the access log line")
    lines = log.read_text().splitlines()
    assert any("GET /foo\\nFORGED 404" in line for line in lines), lines[-10:]
    assert any("/v1/jobs/x\\r\\nFORGED line" in line for line in lines), lines[-10:]
    assert [line for line in lines if line.startswith("FORGED")] == []
    assert not any("\x1b" in line for line in lines)
