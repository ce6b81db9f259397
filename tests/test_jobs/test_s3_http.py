"""The S3 store over real HTTP (moto's server on 127.0.0.1): round trips, a missing bucket found
and created, a server paused mid-call (the call waits it out), a server gone (StoreUnavailable
after the retry window, which a stage counts as transient), and /readyz naming the store; and
(with botocore's Stubber, since moto does not throttle) which S3 errors count as transient."""

from __future__ import annotations

import signal
import threading
import time
import warnings

import pytest
from conftest import S3Server

from api.main import create_app
from jobs.store import StoreUnavailable, open_store, wait_for_store

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def test_round_trip_and_a_missing_key(s3_server: S3Server) -> None:
    settings = s3_server.settings("round-trip", s3_create_bucket=True)
    store = open_store(settings)
    wait_for_store(store, settings)  # creates the bucket
    assert store.put("a" * 32 + "/result.png", b"\x89PNG data", "image/png") == (
        f"s3://round-trip/results/{'a' * 32}/result.png"
    )
    assert store.get("a" * 32 + "/result.png") == b"\x89PNG data"
    assert store.get("b" * 32 + "/result.png") is None


def test_missing_bucket_is_reported_then_waited_for(s3_server: S3Server) -> None:
    settings = s3_server.settings("late-bucket", redis_backoff_max=0.2, store_retry_seconds=0.5)
    store = open_store(settings)
    assert store.check() == "the bucket 'late-bucket' does not exist"
    with pytest.raises(StoreUnavailable, match="does not exist"):  # transient: a stage retries
        store.put("c" * 32 + "/x.png", b"x", "image/png")
    waited = threading.Event()

    def start_worker() -> None:
        wait_for_store(store, settings)
        waited.set()

    threading.Thread(target=start_worker, daemon=True).start()
    time.sleep(1.5)
    assert not waited.is_set(), "a worker went on although the bucket does not exist"
    open_store(s3_server.settings("late-bucket", s3_create_bucket=True)).create()
    assert waited.wait(10), "the worker did not notice the bucket appear"
    assert store.check() is None


PAUSE = 3.0  # seconds the server is SIGSTOPped; longer than the client's timeouts below


def test_a_paused_server_delays_a_call_but_does_not_fail_it(s3_server: S3Server) -> None:
    settings = s3_server.settings(
        "paused", s3_create_bucket=True, s3_timeout=1.0, store_retry_seconds=PAUSE + 20
    )
    store = open_store(settings)
    wait_for_store(store, settings)
    s3_server.process.send_signal(signal.SIGSTOP)
    timer = threading.Timer(PAUSE, s3_server.process.send_signal, [signal.SIGCONT])
    timer.start()
    started = time.monotonic()
    try:
        store.put("d" * 32 + "/result.png", b"after the pause", "image/png")
    finally:
        timer.join()
    assert time.monotonic() - started >= PAUSE - 0.5  # it did wait for the server
    assert store.get("d" * 32 + "/result.png") == b"after the pause"


def test_a_server_gone_is_unavailable_and_readyz_says_so(redis_server, tmp_path) -> None:
    server = S3Server(tmp_path / "moto.log")
    settings = server.settings(
        "gone",
        s3_create_bucket=True,
        s3_timeout=1.0,
        store_retry_seconds=1.0,
        redis_url=redis_server.url,
    )
    store = open_store(settings)
    wait_for_store(store, settings)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json()["detail"]["store"] == {"ok": True, "error": None}
        server.stop()
        started = time.monotonic()
        with pytest.raises(StoreUnavailable, match="unreachable"):
            store.get("e" * 32 + "/result.png")
        assert time.monotonic() - started >= 1.0  # retried for its window first
        response = client.get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["detail"]["store"]["ok"] is False
        assert "result store: the S3 store is unreachable" in body["error"]


@pytest.mark.parametrize(
    ("code", "status", "transient"),
    [
        ("SlowDown", 503, True),  # throttling
        ("InternalError", 500, True),
        ("SomethingNew", 502, True),  # any 5xx
        ("AccessDenied", 403, False),  # a setting to fix: no retry mends it
    ],
)
def test_store_errors_are_classed(code: str, status: int, transient: bool) -> None:
    import boto3
    from botocore.exceptions import ClientError
    from botocore.stub import Stubber

    from jobs.store import S3Store

    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="a", aws_secret_access_key="b"
    )
    store = S3Store("bucket", "", client, retry_seconds=0)
    with Stubber(client) as stub:
        stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
        expected = StoreUnavailable if transient else ClientError
        with pytest.raises(expected) as caught:
            store.put("f" * 32 + "/x.png", b"x", "image/png")
        assert isinstance(caught.value, OSError) is transient  # what a stage retries
