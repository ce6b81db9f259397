"""Body limits on the stream: a chunked body (no Content-Length) past the limit is cut with a
413 as it arrives, against the API under a real uvicorn, and the API's memory stays flat."""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import free_port, wait_listening

from jobs.connection import EmbeddedRedis

REPO = Path(__file__).resolve().parents[2]
UPLOAD_LIMIT = 10 * 2**20  # the default CASCADE_MAX_UPLOAD_BYTES
CHUNK = 64 * 1024


def rss_kib(pid: int, field: str) -> int:
    """VmRSS (now) or VmHWM (the peak) of `pid`, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} not in /proc/{pid}/status")


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[int, int, Path]]:
    """uvicorn serving the API in its own process: (port, pid, its temporary folder)."""
    root = tmp_path_factory.mktemp("limits")
    redis = EmbeddedRedis(root / "redis.rdb")
    spool = root / "tmp"
    spool.mkdir()
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "CASCADE_REDIS_URL": redis.url,
        "CASCADE_STORE": str(root / "store"),
        "TMPDIR": str(spool),  # where a multipart parser would spool an upload to disk
    }
    command = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"]
    server = subprocess.Popen(
        [*command, "--port", str(port), "--log-level", "warning"], env=env, cwd=REPO
    )
    try:
        wait_listening(port, server, 60, "uvicorn")
        yield port, server.pid, spool
    finally:
        server.terminate()
        server.wait(10)
        redis.stop()


def send_chunked(port: int, path: str, content_type: str, total: int) -> tuple[int, int, bytes]:
    """POST `total` bytes with Transfer-Encoding: chunked, stopping as soon as the server
    answers; (status, bytes sent, response body)."""
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    if content_type.startswith("multipart"):
        opening = (
            b'--x\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            b"Content-Type: image/png\r\n\r\n"
        )
    else:
        opening = b'{"class_id": 1, "class_name": "'
    payload = b"a" * CHUNK
    sent, answer = 0, b""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as connection:
        connection.sendall(head + f"{len(opening):x}\r\n".encode() + opening + b"\r\n")
        while sent < total:
            readable, _, _ = select.select([connection], [], [], 0)
            if readable:
                break
            try:
                connection.sendall(f"{CHUNK:x}\r\n".encode() + payload + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += CHUNK
        else:
            connection.sendall(b"0\r\n\r\n")
        connection.settimeout(10)
        try:
            while b"\r\n\r\n" not in answer or len(answer) < answer.index(b"\r\n\r\n") + 60:
                data = connection.recv(65536)
                if not data:
                    break
                answer += data
        except (ConnectionResetError, TimeoutError):
            pass
    status = int(answer.split(b" ", 2)[1]) if answer.startswith(b"HTTP/1.1") else 0
    return status, sent, answer.partition(b"\r\n\r\n")[2]


@pytest.mark.parametrize(
    ("path", "content_type"),
    [("/v1/upscales", "multipart/form-data; boundary=x"), ("/v1/generations", "application/json")],
)
def test_chunked_body_past_the_limit_is_cut_with_413(api, path: str, content_type: str):
    port, pid, spool = api
    idle = rss_kib(pid, "VmRSS")
    total = 5 * UPLOAD_LIMIT
    status, sent, body = send_chunked(port, path, content_type, total)
    assert status == 413, body
    assert b"too large" in body
    assert sent < total, "the whole body was read before the answer"
    growth_mib = (rss_kib(pid, "VmHWM") - idle) / 1024
    assert growth_mib < 50, f"the API grew by {growth_mib:.0f} MiB reading a cut body"
    assert sum(file.stat().st_size for file in spool.rglob("*") if file.is_file()) == 0


def test_small_chunked_request_still_works(api):
    port = api[0]
    status, _, body = send_chunked(port, "/v1/generations", "application/json", 0)
    # The opening alone is an unterminated JSON string: a 422 saying so, not a 413.
    assert status == 422, body
    assert "not valid JSON" in json.loads(body)["error"]
