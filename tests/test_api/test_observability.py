"""What an operator watches: HTTP metrics by route template and status, queue wait and job
latency from the job records, build info; logs as JSON lines carrying request and job ids."""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import warnings

from prometheus_client.parser import text_string_to_metric_families

from api.main import create_app
from cascade import logformat
from cascade.stages import StageRun
from jobs.lifecycle import Jobs
from jobs.plan import PlannedStage
from jobs.record import NewJob
from jobs.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def samples(text: str) -> dict[tuple[str, tuple], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def test_http_requests_are_counted_by_route_template_and_status(redis_server, tmp_path):
    settings = Settings(redis_url=redis_server.url, store=str(tmp_path))
    unknown = "0" * 32
    series = (
        "cascade_http_requests_total",
        (("method", "GET"), ("route", "/v1/jobs/{job_id}"), ("status", "404")),
    )
    latency = (
        "cascade_http_request_duration_seconds_count",
        (("method", "GET"), ("route", "/v1/jobs/{job_id}")),
    )
    with TestClient(create_app(settings)) as client:
        before = samples(client.get("/metrics").text)
        for _ in range(3):
            assert client.get(f"/v1/jobs/{unknown}").status_code == 404
        client.get("/no/such/path")
        after = samples(client.get("/metrics").text)
    assert after[series] - before.get(series, 0) == 3  # one series for every job id
    assert after[latency] - before.get(latency, 0) == 3
    unmatched = [key for key in after if ("route", "unmatched") in key[1]]
    assert unmatched, "a path no route serves is counted as unmatched"
    build = [key for key in after if key[0] == "cascade_build_info"]
    assert len(build) == 1 and after[build[0]] == 1


def test_queue_wait_and_job_latency_come_from_the_records(redis_server, tmp_path):
    connection = redis_server.client()
    connection.flushdb()
    settings = Settings(redis_url=redis_server.url, store=str(tmp_path))
    jobs = Jobs(connection, 60)
    plan = [
        PlannedStage("base64", 64, 64, StageRun("ddim", 4)),
        PlannedStage("sr256", 256, 256, StageRun("ddim", 4)),
    ]
    jobs.create(NewJob("f" * 32, "generation", {"class_id": 1}, 7, plan, (256, 256)))
    assert jobs.stage_started("f" * 32, "base64", {"model": "tiny"}, "w") == 1
    assert jobs.stage_retrying("f" * 32, "base64", "the worker stopped")
    assert jobs.stage_started("f" * 32, "base64", {"model": "tiny"}, "w") == 2  # not a wait
    assert jobs.end("f" * 32, "canceled")
    with TestClient(create_app(settings)) as client:
        found = samples(client.get("/metrics").text)
    assert found[("cascade_queue_wait_seconds_count", (("stage", "base64"),))] == 1
    assert found[("cascade_queue_wait_seconds_count", (("stage", "sr256"),))] == 0
    ended = (("kind", "generation"), ("status", "canceled"))
    assert found[("cascade_job_duration_seconds_count", ended)] == 1
    assert 0 <= found[("cascade_job_duration_seconds_sum", ended)] < 60


def test_json_lines_carry_the_request_and_job_ids(monkeypatch, capsys):
    monkeypatch.setenv("CASCADE_LOG_FORMAT", "json")
    handler = logging.StreamHandler(sys.stderr)
    logformat.use_format([handler])
    logger = logging.getLogger("cascade.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        token = logformat.JOB_ID.set("a" * 32)
        logger.warning("stage %s: line one\nline two", "sr256", extra={"request_id": "req-1"})
        logformat.JOB_ID.reset(token)
        try:
            raise RuntimeError("broken")
        except RuntimeError:
            logger.exception("it failed")
    finally:
        logger.removeHandler(handler)
    first, second = capsys.readouterr().err.strip().split("\n")
    line = json.loads(first)
    # One line per record (json, and the API's safe records, escape the line break).
    assert line["message"].startswith("stage sr256: line one") and "line two" in line["message"]
    assert line["level"] == "WARNING" and line["logger"] == "cascade.test.json"
    assert line["job_id"] == "a" * 32 and line["request_id"] == "req-1"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", line["time"])
    failure = json.loads(second)
    assert "job_id" not in failure and "RuntimeError: broken" in failure["exception"]


def test_an_unknown_log_format_is_refused_with_the_choices():
    done = subprocess.run(
        [sys.executable, "-m", "cascade.cli", "gc"],
        env={"CASCADE_LOG_FORMAT": "xml", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "CASCADE_LOG_FORMAT must be one of text, json, not 'xml'" in done.stderr
