"""Job and stage statuses: the Lua guards and the page speak the enum's words."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jobs.connection import EmbeddedRedis
from jobs.events import EVENT_TYPES
from jobs.status import TERMINAL, JobStatus, StageStatus, lua_ended

JOBS_JS = Path(__file__).parents[2] / "api" / "static" / "jobs.js"


def js_list(name: str) -> list[str]:
    """A `const NAME = [...]` string list of the page's jobs.js."""
    match = re.search(rf"const {name} = \[(.*?)\];", JOBS_JS.read_text(), re.DOTALL)
    assert match, f"jobs.js has no list {name}"
    return json.loads(f"[{match.group(1).rstrip().rstrip(',')}]")


def test_the_page_knows_the_terminal_statuses_and_event_types():
    assert js_list("TERMINAL") == ["succeeded", "failed", "canceled"]
    assert js_list("TERMINAL") == [status.value for status in TERMINAL]
    assert js_list("EVENT_TYPES") == list(EVENT_TYPES)


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
