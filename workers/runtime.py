"""What a worker process sets up once (cog's `setup()`): Redis, the store and each stage's model.

Stage jobs then only `run()`: a model is loaded the first time its stage is needed (the worker
entry point loads the stages it serves before taking any job) and kept for the process's life.
A stage whose weights cannot be loaded is kept out, with the reason, rather than ending the
process: the worker serves the stages that did load.
"""

from __future__ import annotations

import logging
import socket
from dataclasses import dataclass, field

import torch

from cascade.checkpoints import CheckpointError
from cascade.pipeline import Stage, StageError, default_weights, load_stage
from cascade.stages import STAGES, StageRun
from jobs.catalog import announce
from jobs.connection import connect
from jobs.lifecycle import Jobs
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
        self.store: Store = open_store(settings)
        # A job's end writes job.json (`Jobs.end`), which names the torch that made it.
        self.about = {"torch": torch.__version__}
        self.jobs = Jobs(
            self.connection,
            settings.result_ttl,
            settings=settings,
            store=self.store,
            about=self.about,
        )
        self.device = resolve_device(settings.device)
        self.weights = stage_weights(settings)
        self.stages: dict[str, Stage] = {}
        # Stages whose weights did not load, and why in words a client may read (no host paths).
        self.unloaded: dict[str, str] = {}
        self.host = socket.gethostname()
        self.batch: Batch | None = None  # the jobs the worker claimed to run together, if any

    def stage(self, name: str) -> Stage:
        """The stage's model, loaded on first use and kept; CheckpointError (with the reason)
        for a stage whose weights did not load, without trying again for every job."""
        if name not in self.stages and name not in self.unloaded:
            self.try_load(name)
        if name in self.unloaded:
            raise CheckpointError(self.unloaded[name])
        return self.stages[name]

    def try_load(self, name: str) -> bool:
        """Load the stage's model; on failure keep the stage out with the reason, log it, and
        return False (a broken checkpoint must not take the worker's other stages down)."""
        try:
            self.stages[name] = self._load(name)
        except (CheckpointError, StageError) as error:  # StageError: a mismatched student
            self._keep_out(name, str(error))
            return False
        except Exception as error:  # e.g. out of memory moving it to the device
            log.exception("stage %s: loading %s failed", name, self.weights[name])
            self._keep_out(
                name,
                f"stage {name}: its weights could not be loaded onto {self.device} "
                f"({type(error).__name__}); the worker's log has the details",
            )
            return False
        self.unloaded.pop(name, None)
        announce(self.connection, name, self.describe(name))
        return True

    def _keep_out(self, name: str, reason: str) -> None:
        log.error(
            "stage %s NOT served: %s (weights %s); fix or replace them and restart the worker",
            name,
            reason,
            self.weights[name],
        )
        self.unloaded[name] = reason

    def describe(self, name: str) -> dict[str, object]:
        """What a job record and the model catalog say about the stage's model here: the
        stage's own description, its weights by file name and SHA-256, this host and device."""
        stage = self.stage(name)
        return {
            **stage.describe(),
            "weights": stage.model.weights,
            "host": self.host,
            "device": str(self.device),
        }

    def _load(self, name: str) -> Stage:
        settings = self.settings
        defaults = StageRun(settings.sampler_for(name), settings.steps_for(name))
        stage = load_stage(name, self.weights[name], self.device, defaults, settings.compile)
        model = stage.model
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
            log.info(
                "stage %s: %s (sha256 %s) on %s",
                name,
                self.weights[name],
                model.sha256,
                self.device,
            )
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
