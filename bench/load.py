"""A bounded load test against a running service: `python -m bench.load --url URL`.

Submits `--jobs` generations from `--concurrency` clients (each POST with an Idempotency-Key, and
retried with it on a lost connection, as a careful client would), follows every job until it
ends or `--deadline` passes, and reports how many were submitted, succeeded, failed, lost (the
API no longer knows them) and stuck (not ended by the deadline), with latency percentiles: the
POST's, and submission to the job's end."""

from __future__ import annotations

import argparse
import json
import statistics
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx

TERMINAL = ("succeeded", "failed", "canceled")


@dataclass
class Outcome:
    key: str
    job_id: str | None = None
    submit_seconds: float | None = None
    end_seconds: float | None = None
    status: str = "unsubmitted"
    errors: list[str] = field(default_factory=list)


def submit(http: httpx.Client, body: dict, attempts: int = 5) -> Outcome:
    """POST one generation, retrying a lost connection or a 5xx with the same key."""
    outcome = Outcome(key=uuid.uuid4().hex)
    started = time.monotonic()
    for attempt in range(attempts):
        try:
            response = http.post(
                "/v1/generations", json=body, headers={"Idempotency-Key": outcome.key}
            )
        except httpx.TransportError as error:
            outcome.errors.append(type(error).__name__)
        else:
            if response.status_code == 202:
                outcome.job_id, outcome.status = response.json()["id"], "queued"
                outcome.submit_seconds = time.monotonic() - started
                return outcome
            outcome.errors.append(str(response.status_code))
            if response.status_code < 500 and response.status_code != 429:
                return outcome
            time.sleep(float(response.headers.get("retry-after", 0.5 * 2**attempt)))
            continue
        time.sleep(0.5 * 2**attempt)
    return outcome


def follow(http: httpx.Client, outcome: Outcome, started: float, deadline: float) -> None:
    """Poll the job until it ends (end_seconds: from its submission) or the deadline passes."""
    while time.monotonic() < deadline:
        try:
            response = http.get(f"/v1/jobs/{outcome.job_id}")
        except httpx.TransportError:
            time.sleep(0.5)
            continue
        if response.status_code == 404:
            outcome.status = "lost"
            return
        if response.status_code == 200:
            status = response.json()["status"]
            if status in TERMINAL:
                outcome.status = status
                outcome.end_seconds = time.monotonic() - started
                return
        time.sleep(0.2)
    outcome.status = "stuck"


def percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"p50": None, "p90": None, "p99": None, "max": None}
    cuts = (
        statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    )
    return {
        "p50": round(cuts[49], 3),
        "p90": round(cuts[89], 3),
        "p99": round(cuts[98], 3),
        "max": round(max(values), 3),
    }


def run(url: str, jobs: int, concurrency: int, deadline_s: float, body: dict) -> dict:
    """The load test; its report as a dict."""
    deadline = time.monotonic() + deadline_s

    def one(_: int) -> Outcome:
        with httpx.Client(base_url=url, timeout=30) as http:
            started = time.monotonic()
            outcome = submit(http, body)
            if outcome.job_id is not None:
                follow(http, outcome, started, deadline)
            return outcome

    began = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        outcomes = list(pool.map(one, range(jobs)))
    wall = time.monotonic() - began
    counts = {
        status: sum(outcome.status == status for outcome in outcomes)
        for status in ("succeeded", "failed", "canceled", "lost", "stuck", "unsubmitted")
    }
    return {
        "url": url,
        "jobs": jobs,
        "concurrency": concurrency,
        "request": body,
        "submitted": sum(outcome.job_id is not None for outcome in outcomes),
        **counts,
        "duplicates": len([o.job_id for o in outcomes if o.job_id])
        - len({o.job_id for o in outcomes if o.job_id}),
        "wall_seconds": round(wall, 1),
        "submit_seconds": percentiles([o.submit_seconds for o in outcomes if o.submit_seconds]),
        "end_seconds": percentiles([o.end_seconds for o in outcomes if o.end_seconds]),
        "refusals": sorted({error for outcome in outcomes for error in outcome.errors}),
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--deadline", type=float, default=600.0, help="seconds, whole run")
    parser.add_argument("--size", type=int, default=64, choices=(64, 256, 1024))
    parser.add_argument("--steps", type=int, default=None)
    args = parser.parse_args()
    body: dict[str, object] = {"class_id": 207, "size": args.size}
    if args.steps:
        body["steps"] = args.steps
    print(json.dumps(run(args.url, args.jobs, args.concurrency, args.deadline, body), indent=1))


if __name__ == "__main__":
    main()
