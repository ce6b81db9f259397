"""A full result disk: every store write that runs out of space fails its stage at once with the
disk's free space and leaves no temporary behind; and the real service (a worker and the API on
the embedded Redis) on a small tmpfs fails the job that fills it, stops taking work under the
floor (507, /readyz) and runs jobs again once space is freed, with no restart."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import service_env, wait_for
from rq import Worker

from api.main import create_app
from cascade.images import to_png
from jobs.connection import EmbeddedRedis
from jobs.queues import stage_queue
from jobs.settings import Settings
from jobs.store import MB, DiskFull, LocalStore
from workers.stage import failure_reason

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

FULL_MESSAGE = re.compile(r"^the result disk is full \(\d+\.\d+ MB free\)$")
OLD = b"the previous version"


class FailingFile:
    """A real file whose write stores half the data and then fails, as a disk that fills
    mid-write does (or whose close fails, as a network file system's flush can)."""

    def __init__(self, file, code: int, at: str):
        self.file, self.code, self.at = file, code, at

    def write(self, data: bytes) -> int:
        if self.at == "write":
            self.file.write(data[: len(data) // 2])
            self.file.flush()
            raise OSError(self.code, os.strerror(self.code))
        return self.file.write(data)

    def __enter__(self) -> FailingFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        if self.at == "close" and exc[0] is None:
            raise OSError(self.code, os.strerror(self.code))


def inject(monkeypatch: pytest.MonkeyPatch, at: str, code: int) -> None:
    """Make the store's write fail with `code` at one of its steps."""

    def fail(*args: object, **kwargs: object) -> None:
        raise OSError(code, os.strerror(code))

    if at == "mkdir":
        monkeypatch.setattr(os, "mkdir", fail)
    elif at == "create":  # mkstemp's os.open
        monkeypatch.setattr(os, "open", fail)
    elif at == "replace":
        monkeypatch.setattr(os, "replace", fail)
    else:
        real = os.fdopen
        monkeypatch.setattr(os, "fdopen", lambda *a, **k: FailingFile(real(*a, **k), code, at))


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
@pytest.mark.parametrize("at", ["mkdir", "create", "write", "close", "replace"])
def test_a_full_disk_fails_the_stage_at_once_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str, code: int
):
    store = LocalStore(tmp_path / "results")
    folder = tmp_path / "results" / ("new-job" if at == "mkdir" else "job")
    if at != "mkdir":
        store.put("job/result.png", OLD, "image/png")  # a finished file must survive intact
    inject(monkeypatch, at, code)
    with pytest.raises(DiskFull) as caught:
        store.put(f"{folder.name}/result.png", b"x" * 100_000, "image/png")
    monkeypatch.undo()
    error = caught.value
    assert error.errno == code
    assert FULL_MESSAGE.match(str(error)), str(error)
    free = shutil.disk_usage(tmp_path).free / MB
    assert abs(float(re.search(r"\((\S+) MB", str(error))[1]) - free) < 50  # this disk's figure
    # Failed for good, never retried: a retry would only sample the stage again.
    assert failure_reason("sr256", type(error), 900, error) == (str(error), False)
    if at == "mkdir":
        assert not folder.exists()
    else:  # no temporary beside the earlier file, which is whole
        assert [path.name for path in folder.iterdir()] == ["result.png"]
        assert (folder / "result.png").read_bytes() == OLD


@pytest.mark.parametrize("at", ["create", "write", "replace"])
def test_other_store_errors_stay_transient_and_leave_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, at: str
):
    store = LocalStore(tmp_path)
    inject(monkeypatch, at, errno.EIO)
    with pytest.raises(OSError) as caught:
        store.put("job/result.png", b"x" * 1000, "image/png")
    monkeypatch.undo()
    assert not isinstance(caught.value, DiskFull)
    assert failure_reason("sr256", type(caught.value), 900, caught.value) == (
        "the worker could not reach the result store",
        True,
    )
    assert list((tmp_path / "job").iterdir()) == []


def test_the_default_floor_holds_a_2048_job(tmp_path: Path):
    """CASCADE_MIN_FREE_MB's default against what a 16x upscale to 2048x2048 writes at worst
    (noise does not compress): its sr1024 preview and result.png, its sr256 preview, job.json,
    and the sr256 tensor Redis keeps (on the same disk, for the embedded Redis's old folder)."""
    generator = torch.Generator().manual_seed(0)
    big = len(to_png(torch.rand(1, 3, 2048, 2048, generator=generator) * 2 - 1))
    small = len(to_png(torch.rand(1, 3, 512, 512, generator=generator) * 2 - 1))
    tensor = 512 * 512 * 3 * 4
    written = 2 * big + small + 4096 + tensor
    assert big > 2048 * 2048 * 3  # noise really is incompressible: the worst case
    floor = Settings().min_free_mb * MB
    assert floor >= 1.5 * written, (floor, written)  # room for the job, with a margin
    assert floor <= 4 * written  # and not so much that a disk with room sits idle


# ---- the real service on a small tmpfs -----------------------------------------------------

TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}
FLOOR_MB = 0.05  # below one upscaled preview: a stage can start and still run out
TMPFS_MB = 8


@pytest.fixture
def small_disk(tmpfs: Callable[[str, int], Path]) -> Path:
    """A fresh tmpfs of TMPFS_MB as the result folder."""
    return tmpfs("results", TMPFS_MB)


def free(path: Path) -> int:
    return shutil.disk_usage(path).free


def fill(path: Path, name: str, leave: int) -> None:
    """Grow ballast file `name` until `leave` bytes (about) stay free on `path`'s disk."""
    with open(path / name, "ab") as ballast:
        ballast.write(b"\0" * max(0, free(path) - leave))


def started(log: Path, job_id: str, stage: str) -> int:
    """How often the worker's log says it started `stage` of the job (sampled it)."""
    line = rf"job {job_id}( \(request [^)]*\))?: stage {stage} started"
    return len(re.findall(line, log.read_text()))


@pytest.mark.service
def test_a_full_result_disk_is_stated_and_survived(
    small_disk: Path, redis_server: EmbeddedRedis, tmp_path: Path
):
    settings = Settings(
        redis_url=redis_server.url,
        store=str(small_disk),
        min_free_mb=FLOOR_MB,
        torch_threads=1,
        heartbeat_interval=1,
        heartbeat_ttl=15,
        maintenance_interval=2,
        max_batch=1,
        **TINY,  # retries stay at their default: a full disk must not use them
    )
    log = tmp_path / "worker.log"
    with open(log, "w") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "cascade.cli", "worker"],
            env=service_env(settings),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    connection = redis_server.client()
    # An API that does not look at the disk stands in for jobs queued before the floor was hit.
    unchecked = Settings(**{**settings.model_dump(), "min_free_mb": 0})
    try:
        with TestClient(create_app(settings)) as http, TestClient(create_app(unchecked)) as early:

            def submit(client: TestClient = http) -> str:
                body = {"class_id": 1, "size": 256, "steps": 2}
                response = client.post("/v1/generations", json=body)
                assert response.status_code == 202, response.text
                return response.json()["id"]

            def ended(job_id: str, timeout: float = 60) -> dict:
                def view() -> dict | None:
                    job = http.get(f"/v1/jobs/{job_id}").json()
                    return job if job["status"] in ("succeeded", "failed", "canceled") else None

                return wait_for(view, timeout, f"job {job_id} to end")

            def listening() -> bool:
                assert worker.poll() is None, f"worker exited: {log.read_text()[-3000:]}"
                workers = Worker.all(queue=stage_queue(connection, "sr256"))
                return any(found.pid == worker.pid for found in workers)

            wait_for(listening, 120, "the worker to listen")
            ready = http.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert ready.json()["disk"]["ok"] is True
            assert ready.json()["disk"]["free_mb"] == pytest.approx(TMPFS_MB * 1.048576, abs=0.5)

            # A first job measures what one writes: base64.png, then sr256.png and result.png.
            first = ended(submit())
            assert first["status"] == "succeeded", first
            sizes = {
                path.name: path.stat().st_size for path in (small_disk / first["id"]).iterdir()
            }
            base, upscaled = sizes["base64.png"], sizes["sr256.png"]
            assert upscaled > 32_768, sizes  # room for the margins below on 4 KiB pages

            # Leave room for the base's preview and three quarters of the upscaled one: the next
            # job's sr256 stage starts (the floor is met) and its write runs out of space.
            assert FLOOR_MB * MB < upscaled // 2
            fill(small_disk, "ballast", base + 8192 + 3 * upscaled // 4)
            doomed = submit()
            failed = ended(doomed)
            assert failed["status"] == "failed", failed
            stages = {stage["name"]: stage for stage in failed["stages"]}
            assert stages["base64"]["status"] == "succeeded"
            assert stages["sr256"]["status"] == "failed"
            assert FULL_MESSAGE.match(stages["sr256"]["error"]), stages["sr256"]
            assert failed["error"] == f"stage sr256 failed: {stages['sr256']['error']}"
            assert stages["sr256"]["attempts"] == 1  # sampled once: not retried
            time.sleep(2)  # a retry, had one been queued, would have started by now
            assert started(log, doomed, "sr256") == 1
            # No partial upscale or temporary file is left. The failed job's record is written
            # where the few bytes it needs still fit (its end path never depends on it).
            left = sorted(path.name for path in (small_disk / doomed).iterdir())
            assert left in (["base64.png"], ["base64.png", "job.json"]), left
            if "job.json" in left:
                record = json.loads((small_disk / doomed / "job.json").read_text())
                assert record["status"] == "failed", record

            # Under the floor: submissions get 507 with Retry-After, /readyz says why, the
            # worker keeps running but takes no stage, and job pages still answer.
            fill(small_disk, "ballast", int(FLOOR_MB * MB) // 2)  # under the floor
            refused = http.post("/v1/generations", json={"class_id": 1, "size": 64})
            assert refused.status_code == 507, refused.text
            assert int(refused.headers["Retry-After"]) > 0
            reason = refused.json()["error"]
            assert "MB free, under the 0.05 MB kept free (CASCADE_MIN_FREE_MB)" in reason, reason
            waiting = submit(early)
            not_ready = http.get("/readyz")
            assert not_ready.status_code == 503
            assert "workers take no stages" in not_ready.json()["error"]
            assert not_ready.json()["detail"]["disk"]["ok"] is False
            assert not_ready.json()["detail"]["disk"]["free_mb"] < FLOOR_MB
            time.sleep(8)  # more than the worker's re-check and dequeue intervals
            assert http.get(f"/v1/jobs/{waiting}").json()["status"] == "queued"
            assert started(log, waiting, "base64") == 0
            assert worker.poll() is None
            assert http.get("/readyz").json()["detail"]["workers"]["sr256"] == 1  # still alive
            assert "taking no stages until space is freed" in log.read_text()

            # Space freed: the waiting job runs and new ones are accepted, with no restart.
            (small_disk / "ballast").unlink()
            freed = time.monotonic()
            assert ended(waiting, timeout=30)["status"] == "succeeded"
            assert time.monotonic() - freed < 30
            assert http.get("/readyz").status_code == 200
            assert ended(submit())["status"] == "succeeded"
            assert worker.poll() is None
            leftovers = [path for path in small_disk.rglob(".*") if path.is_file()]
            assert leftovers == []  # no temporary survived the failed write
    finally:
        worker.terminate()
        try:
            worker.wait(15)
        except subprocess.TimeoutExpired:
            worker.kill()
