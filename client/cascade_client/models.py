"""Typed results mirroring the service's JSON: a submission's answer (`Accepted`) and a job's
view (`Job`, as `GET /v1/jobs/{id}`, the terminal event and webhooks show it). Fields the
service adds later are kept, untyped, in `extra`."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

TERMINAL_STATUSES = ("succeeded", "failed", "canceled")


def _known(cls: type, data: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """`data` split into the dataclass's fields and the rest."""
    names = {item.name for item in fields(cls)} - {"extra"}
    return (
        {key: value for key, value in data.items() if key in names},
        {key: value for key, value in data.items() if key not in names},
    )


@dataclass(frozen=True)
class Links:
    """A job's URLs: relative to the API's root, or absolute where the service has a public
    URL set."""

    self: str
    result: str
    cancel: str
    events: str
    stages: dict[str, str] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Links:
        known, extra = _known(cls, data)
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class StageWeights:
    file: str
    sha256: str


@dataclass(frozen=True)
class Stage:
    """One stage of a job: status, steps, timings, the worker and weights that ran it."""

    name: str
    status: str
    step: int
    steps: int
    sampler: str
    height: int
    width: int
    started_at: str | None = None
    ended_at: str | None = None
    seconds: float | None = None
    attempts: int = 0
    model: str | None = None
    weights: StageWeights | None = None
    worker: str | None = None
    host: str | None = None
    random_weights: bool | None = None
    error: str | None = None
    preview: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stage:
        known, extra = _known(cls, data)
        if known.get("weights") is not None:
            known["weights"] = StageWeights(**known["weights"])
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class Job:
    """A job: the union of its stages (`GET /v1/jobs/{id}`)."""

    id: str
    kind: str
    status: str
    progress: float
    seed: int
    stages: list[Stage]
    links: Links
    stage: str | None = None
    eta_seconds: float | None = None
    error: str | None = None
    request: dict[str, Any] = field(default_factory=dict)
    output: dict[str, int] = field(default_factory=dict)
    created_at: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    random_weights: bool = False
    warning: str | None = None
    result: str | None = None
    result_url: str | None = None  # a presigned URL of the bucket's object where so set
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ended(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        return self.status == "succeeded"

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Job:
        known, extra = _known(cls, data)
        known["stages"] = [Stage.from_json(stage) for stage in known.get("stages", [])]
        known["links"] = Links.from_json(known["links"])
        return cls(**known, extra=extra)


@dataclass(frozen=True)
class Accepted:
    """A submission's answer (202): the job's id, seed, planned stages and links; `replayed`
    when an earlier request with the same Idempotency-Key made it."""

    id: str
    status: str
    seed: int
    stages: list[str]
    links: Links
    random_weights: bool | None = None
    warning: str | None = None
    replayed: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Accepted:
        known, extra = _known(cls, data)
        known["links"] = Links.from_json(known["links"])
        return cls(**known, extra=extra)
