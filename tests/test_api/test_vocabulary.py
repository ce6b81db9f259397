"""The page's status and event vocabulary comes from the service's own definitions."""

from __future__ import annotations

import json
import re
import warnings

from api.main import create_app
from jobs.events import EVENT_TYPES
from jobs.settings import Settings
from jobs.status import JobStatus

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient


def test_the_page_reads_statuses_and_events_from_the_service(redis_server, tmp_path):
    settings = Settings(redis_url=redis_server.url, store=str(tmp_path))
    with TestClient(create_app(settings)) as client:
        response = client.get("/vocabulary.js")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/javascript")
    exported = {
        name: json.loads(value)
        for name, value in re.findall(r"export const (\w+) = (.*);", response.text)
    }
    assert exported["TERMINAL"] == ["succeeded", "failed", "canceled"]
    assert exported["JOB_STATUSES"] == [status.value for status in JobStatus]
    assert exported["EVENT_TYPES"] == list(EVENT_TYPES)
    assert "stage_retrying" in exported["EVENT_TYPES"]
