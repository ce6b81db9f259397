"""Job and stage statuses: the Lua guards and the page speak the enum's words."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from jobs.connection import EmbeddedRedis
from jobs.status import JobStatus, StageStatus, lua_ended

JOBS_JS = Path(__file__).parents[2] / "api" / "static" / "jobs.js"


def test_the_page_imports_the_terminal_statuses_and_event_types():
    """jobs.js holds no copy of the vocabulary: it imports the module the API makes from
    jobs.status and jobs.events (its content: tests/test_api/test_vocabulary.py)."""
    text = JOBS_JS.read_text()
    assert 'import { EVENT_TYPES, TERMINAL } from "/vocabulary.js";' in text
    assert not re.search(r"const (TERMINAL|EVENT_TYPES) =", text)
    assert not re.search(r'\[\s*"succeeded",\s*"failed"', text)


def test_every_status_the_page_compares_with_is_one_the_service_has():
    used = set(re.findall(r'status(?:\s*[!=]==\s*|:\s*)"(\w+)"', JOBS_JS.read_text()))
    assert used >= {"running", "succeeded"}  # the pattern finds the page's comparisons
    assert used <= {status.value for status in (*JobStatus, *StageStatus)}


@pytest.mark.parametrize(
    ("status", "ended"),
    [(None, True), ("queued", False), ("running", False)]
    + [(status, True) for status in ("succeeded", "failed", "canceled")],
)
def test_the_lua_guard_says_when_a_job_has_ended(
    redis_server: EmbeddedRedis, status: str | None, ended: bool
):
    client = redis_server.client()
    client.delete("guard")
    if status is not None:
        client.hset("guard", "status", status)
    script = "local status = redis.call('HGET', KEYS[1], 'status')\n"
    script += f"if {lua_ended('status')} then return 1 end return 0"
    assert client.eval(script, 1, "guard") == int(ended)
