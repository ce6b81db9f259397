"""What a worker process sets up once (cog's `setup()`): Redis, the store and each stage's model.

Stage jobs then only `run()`: a model is loaded the first time its stage is needed (the worker
entry point loads the stages it serves before taking any job) and kept for the process's life.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import torch

from api.settings import Settings, get_settings
from cascade.checkpoints import load
from cascade.pipeline import Stage, default_weights
from cascade.samplers import SamplerSettings
from workers.catalog import announce
from workers.connection import connect
from workers.plan import STAGES
from workers.record import Jobs
from workers.store import Store, open_store

if TYPE_CHECKING:
    from workers.batching import Batch

log = logging.getLogger(__name__)


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
        sampler = SamplerSettings(settings.sampler_for(name), settings.steps_for(name))
        stage = Stage(name, model, sampler).optimize(compile=settings.compile)
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
