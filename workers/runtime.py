"""What a worker process sets up once (cog's `setup()`): Redis, the store and each stage's model.

Stage jobs then only `run()`: a model is loaded the first time its stage is needed (the worker
entry point loads the stages it serves before taking any job) and kept for the process's life.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

from cascade.checkpoints import load
from cascade.pipeline import Stage, default_weights
from cascade.stages import STAGES, StageRun
from jobs.catalog import announce
from jobs.connection import connect
from jobs.record import Jobs
from jobs.settings import Settings, get_settings
from jobs.store import Store, open_store

log = logging.getLogger(__name__)


@dataclass
class Batch:
    """Jobs (by job id, the lead first) that a worker claimed to run one stage together.

    The lead's stage job samples every member; each member's own stage job then reports the
    outcome kept for it here (None, or the exception RQ should see and retry)."""

    job_ids: list[str]
    outcomes: dict[str, Exception | None] = field(default_factory=dict)

    @property
    def lead(self) -> str:
        return self.job_ids[0]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def stage_weights(settings: Settings) -> dict[str, str]:
    """Each stage's weights: CASCADE_WEIGHTS_<STAGE> where set, else the best available default."""
    defaults = default_weights()
    return {name: settings.weights_for(name) or defaults[name] for name in STAGES}


class Runtime:
    """A worker process's long-lived state."""

    def __init__(self, settings: Settings, connection: object | None = None):
        self.settings = settings
        self.connection = connection if connection is not None else connect(settings)
        self.jobs = Jobs(self.connection, settings.result_ttl)
        self.store: Store = open_store(settings)
        self.device = resolve_device(settings.device)
        self.weights = stage_weights(settings)
        self.stages: dict[str, Stage] = {}
        self.batch: Batch | None = None  # the jobs the worker claimed to run together, if any

    def stage(self, name: str) -> Stage:
        """The stage's model, loaded on first use and kept."""
        if name not in self.stages:
            self.stages[name] = self._load(name)
        return self.stages[name]

    def _load(self, name: str) -> Stage:
        settings = self.settings
        model = load(self.weights[name], self.device)
        defaults = StageRun(settings.sampler_for(name), settings.steps_for(name))
        stage = Stage(name, model, defaults).optimize(compile=settings.compile)
        if settings.precision != "auto":
            stage.precision = settings.precision
        if model.random_weights:
            log.warning(
                "stage %s runs RANDOM weights (%s): its images are noise-like, not meaningful; "
                "set CASCADE_WEIGHTS_%s to a trained checkpoint",
                name,
                model.id,
                name.upper(),
            )
        else:
            log.info("stage %s: %s on %s", name, model.id, self.device)
        announce(self.connection, name, {**stage.describe(), "device": str(self.device)})
        return stage


_current: Runtime | None = None


def install(runtime: Runtime) -> None:
    """Make `runtime` the one stage jobs in this process use."""
    global _current
    _current = runtime


def current() -> Runtime:
    """This process's runtime; built from the settings if the worker entry point did not (a
    plain `rq worker` serving our queues)."""
    if _current is None:
        install(Runtime(get_settings()))
    assert _current is not None
    return _current
