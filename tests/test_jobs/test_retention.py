"""Retention: stored results older than the job-record TTL are deleted (local folder and S3),
nothing else is touched, and one worker at a time runs it (a real Redis lock)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import boto3
from botocore.stub import Stubber

from jobs.connection import EmbeddedRedis
from jobs.retention import collect, collect_if_due
from jobs.settings import Settings
from jobs.store import LocalStore, S3Store

REPO = Path(__file__).resolve().parents[2]
OLD, NEW = "a" * 32, "b" * 32
DAY = 86400


def make_job(root: Path, job_id: str, age: float) -> None:
    folder = root / job_id
    folder.mkdir(parents=True)
    for name in ("result.png", "job.json"):
        (folder / name).write_bytes(b"x")
        stamp = time.time() - age
        os.utime(folder / name, (stamp, stamp))


def test_local_store_deletes_only_expired_jobs(tmp_path: Path):
    make_job(tmp_path, OLD, 8 * DAY)
    make_job(tmp_path, NEW, 1 * DAY)
    make_job(tmp_path, ".redis", 30 * DAY)  # the embedded Redis's data: never touched
    make_job(tmp_path, "notes", 30 * DAY)  # not a job id
    settings = Settings(store=str(tmp_path), result_ttl=7 * DAY)
    assert collect(LocalStore(tmp_path), settings) == [OLD]
    assert sorted(path.name for path in tmp_path.iterdir()) == [".redis", NEW, "notes"]


def test_s3_store_deletes_only_expired_jobs():
    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    store, stub = S3Store("results", "cascade", client), Stubber(client)
    now = time.time()
    old, new = datetime.fromtimestamp(now - 8 * DAY, UTC), datetime.fromtimestamp(now - DAY, UTC)
    contents = [
        {"Key": f"cascade/{OLD}/result.png", "LastModified": old},
        {"Key": f"cascade/{OLD}/job.json", "LastModified": old},
        {"Key": f"cascade/{NEW}/result.png", "LastModified": new},
        {"Key": f"cascade/{NEW}/job.json", "LastModified": old},  # the newest object counts
    ]
    stub.add_response(
        "list_objects_v2", {"Contents": contents}, {"Bucket": "results", "Prefix": "cascade/"}
    )
    keys = [{"Key": f"cascade/{OLD}/result.png"}, {"Key": f"cascade/{OLD}/job.json"}]
    stub.add_response(
        "delete_objects",
        {},
        {"Bucket": "results", "Delete": {"Objects": keys, "Quiet": True}},
    )
    with stub:
        assert collect(store, Settings(store="s3://results/cascade", result_ttl=7 * DAY)) == [OLD]
    stub.assert_no_pending_responses()


def test_one_collection_per_interval(tmp_path: Path):
    redis = EmbeddedRedis(tmp_path / "redis" / "gc.rdb")
    try:
        settings = Settings(store=str(tmp_path / "store"), result_ttl=DAY, retention_interval=60)
        make_job(tmp_path / "store", OLD, 2 * DAY)
        store = LocalStore(tmp_path / "store")
        assert collect_if_due(redis.client(), store, settings) == [OLD]
        make_job(tmp_path / "store", NEW, 2 * DAY)
        assert collect_if_due(redis.client(), store, settings) is None  # another ran it
    finally:
        redis.stop()


def test_gc_command(tmp_path: Path):
    make_job(tmp_path, OLD, 8 * DAY)
    env = {**os.environ, "PYTHONPATH": str(REPO), "CASCADE_STORE": str(tmp_path)}
    result = subprocess.run(
        [sys.executable, "-m", "jobs.retention"], env=env, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr
    assert "deleted the stored results of 1 jobs" in result.stdout
    assert not (tmp_path / OLD).exists()
