"""`cascade worker --check`, the container health check: healthy only while a worker on this
host serving the stages has a fresh heartbeat in Redis."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta

from rq import Worker

from jobs.queues import stage_queue
from workers.worker import check

FRESH = 30


def test_check_follows_this_hosts_heartbeat(redis_server) -> None:
    connection = redis_server.client()
    assert check(connection, ["sr256"], FRESH) == 1  # no worker at all
    worker = Worker([stage_queue(connection, "sr256")], connection=connection, name="w-check")
    worker.register_birth()
    worker.heartbeat()
    assert worker.hostname == socket.gethostname()
    assert check(connection, ["sr256"], FRESH) == 0
    assert check(connection, ["sr1024"], FRESH) == 1  # it serves another stage
    stale = (datetime.now(UTC) - timedelta(seconds=FRESH + 5)).strftime("%Y-%m-%dT%H:%M:%SZ")
    connection.hset(worker.key, "last_heartbeat", stale)  # a frozen or dead worker's beat
    assert check(connection, ["sr256"], FRESH) == 1
    worker.register_death()
