"""The per-owner job index against a real (embedded) Redis: order, ties, pruning, cursors."""

from __future__ import annotations

import pytest

from cascade.stages import StageRun
from jobs.lifecycle import Jobs
from jobs.listing import BATCH, BadCursor, index_job, index_key, page
from jobs.plan import PlannedStage
from jobs.record import NewJob, job_key


def new_job(job_id: str, owner: str = "k1") -> NewJob:
    stage = PlannedStage("base64", 64, 64, StageRun("ddim", 5))
    return NewJob(
        id=job_id,
        kind="generation",
        request={},
        seed=1,
        plan=[stage],
        output=(64, 64),
        owner=owner,
    )


@pytest.fixture
def jobs(redis_server) -> Jobs:
    redis_server.client().flushdb()
    return Jobs(redis_server.client(), ttl=3600)


def test_jobs_made_at_the_same_time_page_without_loss_or_repeat(jobs):
    # More ties than one index read holds, so paging must walk within one score.
    ids = [f"job{index:03d}" for index in range(BATCH + 7)]
    for job_id in ids:
        jobs.create(new_job(job_id))
        index_job(jobs.connection, "k1", job_id, 3600, now=1000.0)
    seen, cursor = [], None
    while True:
        records, cursor = page(jobs.connection, jobs, "k1", limit=9, cursor=cursor)
        seen += [record.id for record in records]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)


def test_expired_records_are_skipped_and_old_entries_pruned(jobs):
    connection = jobs.connection
    for job_id, created in (("old", 10.0), ("gone", 8000.0), ("kept", 9000.0)):
        jobs.create(new_job(job_id))
        index_job(connection, "k1", job_id, 3600, now=created)
    # "old" is more than 2 x ttl before the last indexing: pruned from the index.
    assert connection.zscore(index_key("k1"), "old") is None
    connection.delete(job_key("gone"))  # as its record's expiry would
    records, cursor = page(connection, jobs, "k1")
    assert [record.id for record in records] == ["kept"] and cursor is None
    assert connection.zscore(index_key("k1"), "gone") is None  # removed once seen missing


def test_another_owners_index_and_bad_cursors(jobs):
    jobs.create(new_job("mine", owner="k1"))
    index_job(jobs.connection, "k1", "mine", 3600)
    assert page(jobs.connection, jobs, "k2") == ([], None)
    for cursor in ("nonsense", "12.5_", "x_y"):
        with pytest.raises(BadCursor):
            page(jobs.connection, jobs, "k1", cursor=cursor)
