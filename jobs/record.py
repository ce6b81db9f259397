"""The job record: one Redis hash per job (`cascade:job:{id}`), the union of its stage jobs.

The API creates it and both sides read it (`JobRecord`); only the job's state machine
(`jobs.lifecycle.Jobs`) changes it. Per-stage fields are named `{stage}.{field}` so a worker
updates its stage without reading and rewriting the rest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from jobs.plan import PlannedStage
from jobs.status import TERMINAL


def job_key(job_id: str) -> str:
    return f"cascade:job:{job_id}"


def tensor_key(job_id: str, name: str) -> str:
    """Where a stage's float output (or an upload, name "input") waits for the next stage."""
    return f"cascade:tensor:{job_id}:{name}"


# The hand-off holding what an upscale's result carries of its input (`cascade.formats.Carried`:
# alpha plane, greyscale, ICC profile, EXIF), read once, at the final encode.
CARRIED = "carried"


@dataclass(frozen=True)
class NewJob:
    """What the API knows when it accepts a request."""

    id: str
    kind: Literal["generation", "upscale"]
    request: dict[str, object]
    seed: int
    plan: list[PlannedStage]
    output: tuple[int, int]  # final (height, width), after any resize to a target size
    webhook_url: str | None = None
    owner: str = ""  # the API key's id that made it ("" without keys)
    request_id: str = ""  # the X-Request-ID of the POST that made it, for the workers' logs
    traceparent: str = ""  # the submission's trace context (`jobs.tracing`; "" untraced)


class JobRecord:
    """A read-only view of the hash, with typed accessors."""

    def __init__(self, fields: dict[str, str]):
        self.fields = fields

    @property
    def id(self) -> str:
        return self.fields["id"]

    @property
    def status(self) -> str:
        return self.fields["status"]

    @property
    def kind(self) -> str:
        return self.fields["kind"]

    @property
    def seed(self) -> int:
        return int(self.fields["seed"])

    @property
    def request(self) -> dict[str, object]:
        return json.loads(self.fields["request"])

    @property
    def plan(self) -> list[PlannedStage]:
        return [PlannedStage.from_dict(item) for item in json.loads(self.fields["plan"])]

    @property
    def output(self) -> tuple[int, int]:
        height, width = json.loads(self.fields["output"])
        return height, width

    @property
    def output_format(self) -> str:
        """The result's file format (png for a job made before formats were offered)."""
        return str(self.request.get("format", "png"))

    @property
    def owner(self) -> str:
        return self.fields.get("owner", "")

    @property
    def request_id(self) -> str:
        return self.fields.get("request_id", "")

    @property
    def webhook_url(self) -> str | None:
        return self.fields.get("webhook_url") or None

    def stage(self, stage: str, field: str, default: str | None = None) -> str | None:
        return self.fields.get(f"{stage}.{field}", default)

    def time(self, field: str) -> float | None:
        value = self.fields.get(field)
        return float(value) if value else None

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL
