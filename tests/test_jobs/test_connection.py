"""The embedded Redis's data folder (off the results, the old folder still found) and riding out
a Redis whose own disk is full (it refuses writes with MISCONF until space is freed)."""

from __future__ import annotations

import logging
import shutil
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import wait_for
from redis import Redis
from redis.exceptions import ResponseError

from jobs.connection import RedisServer, embedded_redis_path, wait_for_redis
from jobs.settings import Settings


def test_the_embedded_redis_lives_off_the_result_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CASCADE_EMBEDDED_REDIS", raising=False)
    path = embedded_redis_path(Settings())
    assert path == Path(".cascade/redis/cascade.rdb")
    assert Path("results") not in path.parents


def test_data_in_the_old_folder_is_still_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CASCADE_EMBEDDED_REDIS", raising=False)
    (tmp_path / "results" / ".redis").mkdir(parents=True)
    (tmp_path / "results" / ".redis" / "appendonly.aof").write_bytes(b"*1\r\n$4\r\nPING\r\n")
    with caplog.at_level(logging.WARNING, logger="jobs.connection"):
        assert embedded_redis_path(Settings()) == Path("results/.redis/cascade.rdb")
    assert "results/.redis" in caplog.text and ".cascade/redis" in caplog.text
    # A path set on purpose wins, old data or not.
    chosen = tmp_path / "elsewhere" / "jobs.rdb"
    assert embedded_redis_path(Settings(embedded_redis=chosen)) == chosen


def aof_settled(client: Redis) -> bool:
    """Whether the append-only file switched on at start has been written (until then writes
    go to the rewrite's buffer, not to the file)."""
    info = client.info("persistence")
    return info["aof_enabled"] == 1 and not (
        info["aof_rewrite_in_progress"] or info["aof_rewrite_scheduled"]
    )


def test_a_redis_with_a_full_disk_is_waited_for_not_crashed_on(
    tmpfs: Callable[[str, int], Path],
):
    folder = tmpfs("redis", 4)
    process = RedisServer(folder / "cascade.rdb").start()
    client = Redis(unix_socket_path=str(folder / "redis.sock"), socket_timeout=5)
    try:
        assert client.config_get("stop-writes-on-bgsave-error") == {
            "stop-writes-on-bgsave-error": "no"  # a failed snapshot alone stops nothing
        }
        client.set("job", "kept")
        wait_for(lambda: aof_settled(client), 10, "the append-only file to be written")
        with open(folder / "ballast", "wb") as ballast:
            ballast.write(b"\0" * shutil.disk_usage(folder).free)
        client.set("big", b"x" * 100_000)  # taken in memory; its append to the AOF fails
        deadline = time.monotonic() + 10
        while True:  # from here on Redis refuses writes: MISCONF
            try:
                client.set("probe", "1")
            except ResponseError as error:
                assert str(error).startswith("MISCONF"), error
                break
            assert time.monotonic() < deadline, "Redis kept taking writes on a full disk"
            time.sleep(0.2)
        returned = threading.Event()
        waiter = threading.Thread(
            target=lambda: (
                wait_for_redis(client, Settings(redis_backoff_max=0.5)),
                returned.set(),
            ),
            daemon=True,
        )
        waiter.start()
        assert not returned.wait(3)  # even PING is refused while Redis cannot persist
        (folder / "ballast").unlink()
        assert returned.wait(20), "wait_for_redis did not return once space was freed"
        assert client.get("job") == b"kept"
        client.set("after", "1")  # writes are taken again
    finally:
        client.close()
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
