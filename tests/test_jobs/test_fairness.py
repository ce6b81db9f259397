"""A stage queue's order against a real (embedded) Redis: priority first, then API keys take
turns; without keys, first come first served within a priority."""

from __future__ import annotations

import pytest

from jobs.connection import EmbeddedRedis
from jobs.fairness import order_key
from jobs.queues import enqueue_stage, stage_queue
from jobs.settings import Settings


@pytest.fixture
def connection(redis_server: EmbeddedRedis):
    client = redis_server.client()
    client.flushdb()
    return client


def queue(connection, settings: Settings, jobs: list[tuple[str, str, str]]) -> list[str]:
    """Enqueue (job, owner, priority) in order; the job ids in the order workers will take."""
    for job_id, owner, priority in jobs:
        enqueue_stage(connection, settings, job_id, "base64", owner=owner, priority=priority)
    return [rq_id.removesuffix("-base64") for rq_id in stage_queue(connection, "base64").job_ids]


def test_keys_take_turns(connection, redis_server: EmbeddedRedis):
    settings = Settings(redis_url=redis_server.url)
    given = [("A1", "a"), ("A2", "a"), ("B1", "b"), ("C1", "c"), ("C2", "c"), ("A3", "a")]
    order = queue(connection, settings, [(job, owner, "normal") for job, owner in given])
    assert order == ["A1", "B1", "C1", "A2", "C2", "A3"]
    # A key's 20 waiting jobs do not hold back another key's first.
    more = [(f"A{index}", "a", "normal") for index in range(4, 24)] + [("D1", "d", "normal")]
    order = queue(connection, settings, more)
    assert order.index("D1") == 3 and order[:4] == ["A1", "B1", "C1", "D1"]


def test_priority_comes_first_and_no_key_is_first_come_first_served(
    connection, redis_server: EmbeddedRedis
):
    settings = Settings(redis_url=redis_server.url)
    jobs = [
        ("n1", "", "normal"),
        ("l1", "", "low"),
        ("n2", "", "normal"),
        ("h1", "", "high"),
        ("n3", "", "normal"),
        ("h2", "", "high"),
    ]
    assert queue(connection, settings, jobs) == ["h1", "h2", "n1", "n2", "n3", "l1"]


def test_a_key_with_high_priority_does_not_take_turns_with_normal_ones(
    connection, redis_server: EmbeddedRedis
):
    settings = Settings(redis_url=redis_server.url)
    jobs = [("A1", "a", "normal"), ("A2", "a", "normal"), ("B1", "b", "high"), ("B2", "b", "high")]
    assert queue(connection, settings, jobs) == ["B1", "B2", "A1", "A2"]


def test_places_of_jobs_that_left_the_queue_are_dropped(connection, redis_server: EmbeddedRedis):
    settings = Settings(redis_url=redis_server.url)
    key = stage_queue(connection, "base64").key
    for index in range(100):
        enqueue_stage(connection, settings, f"j{index}", "base64", owner="a")
        connection.lpop(key)  # a worker takes it at once
    assert connection.hlen(order_key("cascade-base64")) <= 64 + 2
