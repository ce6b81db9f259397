"""The service-level benchmarks: what HTTP, Redis and a worker process add to a job, and jobs
per second with one or two workers and with cross-request batching on or off.

Everything runs as `cascade serve` runs it, started here: an embedded Redis, the API under
uvicorn, `cascade worker` processes. Workers say a job ended through its webhook, so nothing
polls the API while jobs run.

- `e2e_s`: from POST /v1/generations until the result PNG has been fetched; `direct_s`:
  `Cascade.generate` in this process for the same request (weights, sampler, steps, seed, colour
  fix). The two alternate; medians are reported. `overhead_fraction` = (e2e - direct) / e2e,
  the share of a job's time the service adds (the target is <= 0.05 for a 256 px generation);
  `overhead_ratio` = e2e / direct. The direct call and the worker are different processes, so
  that difference also holds their compute's process-to-process spread; `stage_s` (the job's own
  stage times, from its record: input load, sampling, saving) splits it out, and
  `service_fraction` = (e2e - stage_s) / e2e is what the service alone adds around the stages
  (HTTP, queueing, the hand-over between stages, the webhook and the result download).
- `jobs_per_s.<configuration>`: N 64 px generations submitted back to back, N divided by the
  time from the first POST to the last job's end, for `workers1_batch1`, `workers2_batch1`
  (this process's CPU threads split between the two workers) and `workers1_batchN` (batching
  up to `max_batch`). `batching_speedup` = workers1_batchN / workers1_batch1.
"""

from __future__ import annotations

import io
import json
import logging
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import numpy as np
import torch
from PIL import Image
from rq import Worker

from cascade.chain import Cascade
from cascade.images import to_png
from cascade.stages import StageRun
from jobs.connection import EmbeddedRedis
from jobs.queues import stage_queue

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
SAMPLER = "dpmpp_2m"  # the service's default sampler, for the timed requests
CLASS_ID = 207  # golden retriever, when the base knows every class


def class_ids(source: str) -> tuple[int, ...]:
    """Classes the base at `source` was trained on (the first is the one timed); a base that
    knows every class gets CLASS_ID first."""
    from cascade.checkpoints import load

    known = load(source).spec.classes
    return tuple(known) if known else tuple((CLASS_ID + i) % 1000 for i in range(1000))


class Webhooks:
    """A local HTTP endpoint recording when each job's end was announced, and its status."""

    def __init__(self) -> None:
        self.ended: dict[str, tuple[float, str]] = {}
        self.changed = threading.Condition()
        hooks = self

        class Receiver(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                self.send_response(204)
                self.end_headers()
                with hooks.changed:
                    hooks.ended[body["id"]] = (time.perf_counter(), body["status"])
                    hooks.changed.notify_all()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait(self, job_ids: list[str], timeout: float) -> float:
        """When the last of `job_ids` ended (perf_counter); raises unless all succeeded."""
        with self.changed:
            if not self.changed.wait_for(lambda: all(i in self.ended for i in job_ids), timeout):
                raise TimeoutError(f"{len(job_ids)} benchmark jobs did not end in {timeout} s")
        failed = [i for i in job_ids if self.ended[i][1] != "succeeded"]
        if failed:
            raise RuntimeError(f"benchmark jobs did not succeed: {failed}")
        return max(self.ended[i][0] for i in job_ids)

    def close(self) -> None:
        self.server.shutdown()


class Service:
    """Embedded Redis, the API (uvicorn) and worker processes, as `cascade serve` runs them."""

    def __init__(self, root: Path, env: dict[str, str]):
        self.root = root
        self.redis = EmbeddedRedis(root / "redis" / "bench.rdb")
        self.env = {
            key: value for key, value in os.environ.items() if not key.startswith("CASCADE_")
        }
        self.env.update(env, CASCADE_REDIS_URL=self.redis.url, CASCADE_STORE=str(root / "store"))
        self.env["CASCADE_WEBHOOK_ALLOW"] = "127.0.0.1"  # the bench's own receiver
        self.workers: list[subprocess.Popen] = []
        self.hooks = Webhooks()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        api = [sys.executable, "-m", "uvicorn", "api.main:create_app", "--factory"]
        api += ["--no-access-log"]
        api += ["--port", str(port), "--log-level", "warning"]
        self.api = self._start("api", api, self.env)
        # Webhooks are posted by the sender, as in `cascade serve`, never by the workers.
        self.sender = self._start("webhooks", [sys.executable, "-m", "jobs.sender"], self.env)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        self._until(lambda: self._answers("/healthz"), 60, "the API to start")

    def _start(self, name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
        with open(self.root / f"{name}.log", "a") as out:
            return subprocess.Popen(
                command, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO
            )

    def _answers(self, path: str) -> bool:
        try:
            return self.http.get(path).status_code == 200
        except httpx.TransportError:
            return False

    def _until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
            time.sleep(0.1)

    def start_workers(self, count: int, stages: str, **settings: object) -> None:
        """`count` workers serving `stages`, each with `settings` (CASCADE_* values)."""
        env = {**self.env, **{f"CASCADE_{k.upper()}": str(v) for k, v in settings.items()}}
        command = [sys.executable, "-m", "cascade.cli", "worker", "--stages", stages]
        started = [
            self._start(f"worker-{len(self.workers) + i}", command, env) for i in range(count)
        ]
        self.workers += started
        queue = stage_queue(self.redis.client(), stages.split(",")[0])

        def listening() -> bool:
            for process in started:
                if process.poll() is not None:
                    raise RuntimeError(f"a worker exited ({process.returncode}); see {self.root}")
            pids = {worker.pid for worker in Worker.all(queue=queue)}
            return all(process.pid in pids for process in started)

        self._until(listening, 300, f"{count} worker(s) to listen")

    def stop_workers(self) -> None:
        for process in self.workers:
            process.terminate()
        for process in self.workers:
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.workers = []

    def submit(self, **body: object) -> str:
        response = self.http.post("/v1/generations", json={**body, "webhook_url": self.hooks.url})
        response.raise_for_status()
        return response.json()["id"]

    def run(self, timeout: float = 3600, **body: object) -> tuple[float, bytes, str]:
        """Seconds from submitting one job until its result PNG is in hand, the PNG, the job id."""
        started = time.perf_counter()
        job_id = self.submit(**body)
        self.hooks.wait([job_id], timeout)
        response = self.http.get(f"/v1/jobs/{job_id}/result")
        response.raise_for_status()
        return time.perf_counter() - started, response.content, job_id

    def stage_seconds(self, job_id: str) -> float:
        """The sum of the job's stage times as its record gives them (start to end of each)."""
        response = self.http.get(f"/v1/jobs/{job_id}")
        response.raise_for_status()
        return sum(stage["seconds"] for stage in response.json()["stages"])

    def close(self) -> None:
        self.stop_workers()
        for process in (self.api, self.sender):
            process.terminate()
            process.wait(30)
        self.http.close()
        self.hooks.close()
        self.redis.stop()


@contextmanager
def service(weights: dict[str, str], device: str, steps: tuple[int, int]) -> Iterator[Service]:
    """The service running `weights` on `device`; `steps` (base64, sr256) are its defaults."""
    base_steps, sr_steps = steps
    env = {
        "CASCADE_DEVICE": device,
        # The worker gets this process's CPU threads, so the direct call runs like it.
        "CASCADE_TORCH_THREADS": str(torch.get_num_threads()),
        "CASCADE_STEPS_BASE64": str(base_steps),
        "CASCADE_STEPS_SR256": str(sr_steps),
    }
    for name, source in weights.items():
        env[f"CASCADE_WEIGHTS_{name.upper()}"] = source
    with tempfile.TemporaryDirectory(prefix="cascade-bench-") as root:
        running = Service(Path(root), env)
        try:
            yield running
        finally:
            running.close()


def overhead(
    running: Service, weights: dict[str, str], device: str, steps: tuple[int, int], repeats: int
) -> dict[str, object]:
    """One 256 px generation end to end through the service vs the same call in-process;
    `steps` must be the service's defaults (a request's `steps` would set both stages')."""
    running.start_workers(1, "base64,sr256")
    cascade = Cascade.load(weights, device, stages=("base64", "sr256"))
    class_id = class_ids(weights["base64"])[0]

    def direct(seed: int, counts: tuple[int, int]) -> tuple[float, bytes]:
        runs = {
            name: StageRun(SAMPLER, count, color_fix="wavelet")
            for name, count in zip(("base64", "sr256"), counts, strict=True)
        }
        started = time.perf_counter()
        result = cascade.generate([class_id], 256, [seed], runs=runs)
        seconds = time.perf_counter() - started  # .cpu() in generate has synchronised
        return seconds, to_png(result.final)

    request = {"class_id": class_id, "size": 256, "sampler": SAMPLER, "color_fix": "wavelet"}
    # Warm both paths (first calls allocate and pick kernels) with 1-step jobs.
    running.run(**request, seed=0, steps=1)
    direct(0, (1, 1))
    e2e_runs, stage_runs, direct_runs, same = [], [], [], True
    for repeat in range(repeats):
        seed = 1000 + repeat
        seconds, served, job_id = running.run(**request, seed=seed)  # the stages' default steps
        e2e_runs.append(seconds)
        stage_runs.append(running.stage_seconds(job_id))
        seconds, png = direct(seed, steps)
        direct_runs.append(seconds)
        same = same and same_pixels(served, png)
        log.info(
            "service: end to end %.3f s (stages %.3f s), direct %.3f s",
            e2e_runs[-1],
            stage_runs[-1],
            direct_runs[-1],
        )
    running.stop_workers()
    e2e, alone = statistics.median(e2e_runs), statistics.median(direct_runs)
    around = statistics.median(
        total - inside for total, inside in zip(e2e_runs, stage_runs, strict=True)
    )
    return {
        "e2e_s": e2e,
        "direct_s": alone,
        "overhead_s": e2e - alone,
        "overhead_fraction": (e2e - alone) / e2e,
        "overhead_ratio": e2e / alone,
        "stage_s": statistics.median(stage_runs),
        "service_s": around,
        "service_fraction": around / e2e,
        "same_image": same,
        "e2e_runs_s": e2e_runs,
        "stage_runs_s": stage_runs,
        "direct_runs_s": direct_runs,
    }


def same_pixels(first: bytes, second: bytes) -> bool:
    """Equal images up to 8-bit rounding (the service and the direct call sample the same)."""
    a, b = (np.asarray(Image.open(io.BytesIO(data)), dtype=np.int16) for data in (first, second))
    return a.shape == b.shape and int(np.abs(a - b).max()) <= 1


def throughput(
    running: Service, jobs: int, steps: int, max_batch: int, base: str
) -> dict[str, object]:
    """Jobs per second for `jobs` 64 px generations submitted at once, per worker configuration,
    cycling through the classes the base at `base` knows."""
    known = class_ids(base)
    cores = torch.get_num_threads()  # this process's CPU budget (by default, every core)
    configurations = {
        "workers1_batch1": (1, 1),
        "workers2_batch1": (2, 1),
        "workers1_batchN": (1, max_batch),
    }
    rates = {}
    for name, (workers, batch) in configurations.items():
        threads = max(1, cores // workers)  # workers share the cores, as deployed on a CPU
        running.start_workers(workers, "base64", max_batch=batch, torch_threads=threads)
        warm = [running.submit(class_id=known[0], size=64, seed=i, steps=1) for i in range(workers)]
        running.hooks.wait(warm, 600)
        started = time.perf_counter()
        job_ids = [
            running.submit(class_id=known[i % len(known)], size=64, seed=i, steps=steps)
            for i in range(jobs)
        ]
        ended = running.hooks.wait(job_ids, 3600)
        rates[name] = jobs / (ended - started)
        log.info("throughput %s: %.3f jobs/s", name, rates[name])
        running.stop_workers()
    return {
        "jobs_per_s": rates,
        "batching_speedup": rates["workers1_batchN"] / rates["workers1_batch1"],
        "workers_speedup": rates["workers2_batch1"] / rates["workers1_batch1"],
    }
