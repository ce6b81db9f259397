"""Deployed as users deploy it: two `cascade worker` processes in two separate working folders
(no shared disk), the API in a third, one Redis and moto's S3 server over HTTP. The bucket only
appears after the first job is submitted, a worker is SIGKILLed mid-stage, and the S3 server is
SIGSTOPped then SIGCONTed mid-job: every job succeeds and nothing lands in a local folder."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import time
import warnings
from pathlib import Path

import pytest
from conftest import CASCADE, S3Server, service_env, wait_for
from PIL import Image
from rq import Worker

from api.main import create_app
from jobs.store import open_store

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

pytestmark = pytest.mark.service

TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}
# How long the S3 server stays stopped (a real outage may be 30 s: CASCADE_TEST_S3_PAUSE=30).
PAUSE = float(os.environ.get("CASCADE_TEST_S3_PAUSE", "6"))


def view(client: TestClient, job_id: str) -> dict:
    response = client.get(f"/v1/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def stage_of(job: dict, name: str) -> dict:
    return next(stage for stage in job["stages"] if stage["name"] == name)


def test_two_hosts_a_late_bucket_a_killed_worker_and_a_paused_store(
    redis_server, s3_server: S3Server, tmp_path: Path
) -> None:
    settings = s3_server.settings(
        "deployed",
        redis_url=redis_server.url,
        torch_threads=1,
        heartbeat_interval=1,
        heartbeat_ttl=3,
        maintenance_interval=2,
        redis_backoff_max=1.0,
        max_batch=1,
        s3_timeout=2.0,
        store_retry_seconds=PAUSE + 30,
        **TINY,
    )
    hosts = [tmp_path / "host-a", tmp_path / "host-b"]
    workers = []
    for host in hosts:
        host.mkdir()
        with open(host / "worker.log", "w") as log:
            workers.append(
                subprocess.Popen(
                    [CASCADE, "worker", "--stages", "base64,sr256"],
                    cwd=host,
                    env=service_env(settings),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        with TestClient(create_app(settings)) as client:
            # Submitted before the bucket exists: queued, and the workers wait for the bucket.
            response = client.post(
                "/v1/generations", json={"class_id": 3, "size": 256, "steps": 120}
            )
            assert response.status_code == 202, response.text
            generation = response.json()["id"]
            wait_for(
                lambda: all("does not exist" in (h / "worker.log").read_text() for h in hosts),
                120,
                "both workers to say the bucket is missing",
            )
            assert view(client, generation)["status"] == "queued"
            open_store(s3_server.settings("deployed")).create()  # an operator creates it

            def sampling() -> bool:
                stage = stage_of(view(client, generation), "base64")
                return stage["status"] == "running" and (stage["step"] or 0) >= 2

            wait_for(sampling, 180, "the generation's base64 stage to sample")
            metrics = client.get("/metrics").text  # the signal an autoscaler reads
            assert 'cascade_stage_in_flight{stage="base64"} 1.0' in metrics
            assert 'cascade_queue_depth{stage="base64"} 0.0' in metrics
            with io.BytesIO() as buffer:
                Image.new("RGB", (64, 64), (200, 30, 90)).save(buffer, format="PNG")
                files = {"file": ("in.png", buffer.getvalue())}
            response = client.post("/v1/upscales", data={"scale": "4", "steps": "60"}, files=files)
            assert response.status_code == 202, response.text
            upscale = response.json()["id"]

            victim = stage_of(view(client, generation), "base64")["worker"]
            found = Worker.find_by_key(f"rq:worker:{victim}", connection=redis_server.client())
            assert found is not None and found.pid in {worker.pid for worker in workers}
            os.kill(found.pid, signal.SIGKILL)  # mid-stage

            def store_in_use() -> bool:  # the retried base64 done: its preview is being saved
                stage = stage_of(view(client, generation), "sr256")
                return stage["status"] in ("running", "succeeded")

            wait_for(store_in_use, 120, "the generation to reach sr256 on the other host")
            s3_server.process.send_signal(signal.SIGSTOP)
            try:
                time.sleep(PAUSE)
            finally:
                s3_server.process.send_signal(signal.SIGCONT)

            def ended(job_id: str) -> str | None:
                status = view(client, job_id)["status"]
                return status if status in ("succeeded", "failed", "canceled") else None

            for job_id, size in ((generation, 256), (upscale, 256)):
                assert wait_for(lambda j=job_id: ended(j), 180, "the job to end") == "succeeded", (
                    view(client, job_id)
                )
                result = client.get(f"/v1/jobs/{job_id}/result")
                assert result.status_code == 200
                assert Image.open(io.BytesIO(result.content)).size == (size, size)
            assert stage_of(view(client, generation), "base64")["attempts"] >= 2
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.terminate()
        for worker in workers:
            try:
                worker.wait(20)
            except subprocess.TimeoutExpired:
                worker.kill()
    for host in hosts:  # the hosts share no disk, and the store is the bucket
        assert not (host / "results").exists(), sorted(p.name for p in host.iterdir())
    assert open_store(s3_server.settings("deployed")).get(f"{generation}/result.png")
