"""`cascade worker --stages sr256,sr1024`: serve stage queues with models loaded once.

Jobs run in the worker's own process (RQ's SimpleWorker), never in a forked child: a fork after
torch has started its thread pools or touched CUDA is unsafe (CUDA cannot be re-initialised in a
forked child), and forking per job would also reload or copy the model every time.

A stage whose weights do not load is kept out: the worker listens only on the queues of the
stages that loaded, and its registration in Redis says which stages it kept out and why
(`jobs.health`), so `/readyz` and the API can tell clients. A worker with no stage loaded stays
registered, reporting, instead of exiting into a restart loop.

Stopping is graceful: on SIGTERM or Ctrl-C an idle worker exits at once, and a busy one takes no
new job and gives its running stage `CASCADE_STOP_GRACE` seconds to finish; past that, or on a
second signal, the stage stops at its next sampler step and is handed back (queued again at the
front, so the next worker, or this one restarted, takes it up at once), then the worker exits.
"""

from __future__ import annotations

import argparse
import logging
import signal
import socket
import sys
import threading
import time
from types import FrameType

import torch
from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import SimpleWorker, Worker
from rq.executions import Execution
from rq.job import Job
from rq.queue import Queue
from rq.registry import StartedJobRegistry
from rq.serializers import JSONSerializer
from rq.worker import WorkerStatus

from cascade.stages import STAGES
from jobs.connection import connect, stop_requested, wait_for_redis
from jobs.health import UNLOADED_FIELD, encode, remember_served
from jobs.queues import stage_queue, worker_alive
from jobs.retention import collect_if_due
from jobs.settings import Settings, get_settings
from jobs.store import space_shortfall, wait_for_store
from workers.batching import claim
from workers.queue import StageQueue, worker_queue
from workers.runtime import Batch, Runtime, current, install

log = logging.getLogger(__name__)
DISK_RECHECK = 5.0  # seconds between looks at a result disk under its floor


class StageWorker(SimpleWorker):
    """SimpleWorker plus a heartbeat thread while a job runs, and cross-request batching.

    SimpleWorker marks a job alive for the job's whole timeout + 60 s and never again, so a
    killed worker's stage would wait that long before anyone retried it. Here every running
    stage (a batch's members included) is re-marked alive every `job_monitoring_interval`
    seconds for `heartbeat_ttl` seconds, and another worker's maintenance pass retries it soon
    after its worker dies.

    With `max_batch` > 1, the worker claims compatible jobs waiting behind the one it dequeued
    (`workers.batching`): the first job's run samples them all, then each claimed job goes
    through RQ's own bookkeeping (success, failure callback, retry) as if dequeued alone.
    """

    def __init__(
        self,
        *args: object,
        heartbeat_ttl: int = 60,
        max_batch: int = 1,
        unloaded: dict[str, str] | None = None,
        stop_grace: float = 60.0,
        **kwargs: object,
    ):
        super().__init__(*args, **kwargs)
        self.heartbeat_ttl = heartbeat_ttl
        self.max_batch = max_batch
        self.unloaded = unloaded or {}  # stages kept out (weights did not load) -> why
        self.stop_grace = stop_grace
        self._stop_signal_at = 0.0

    def serialize(self) -> dict:
        """RQ's registration, plus the stages this worker kept out and why (`jobs.health`)."""
        return {**super().serialize(), UNLOADED_FIELD: encode(self.unloaded)}

    def handle_warm_shutdown_request(self) -> None:
        """The first SIGTERM/SIGINT (RQ then stops taking jobs): a running stage has the grace
        period to finish before it is handed back."""
        self._stop_signal_at = time.monotonic()
        if self.get_state() == WorkerStatus.BUSY:
            log.warning(
                "worker %s stopping: the running stage has %.0f s to finish, then it is handed "
                "back (signal again to hand it back now)",
                self.name,
                self.stop_grace,
            )
            current().jobs.hand_back_after(self.stop_grace)
        else:
            log.info("worker %s stopping", self.name)

    def request_force_stop(self, signum: int, frame: FrameType | None) -> None:
        """A second signal: hand the running stage back at its next sampler step, rather than
        RQ's cold shutdown, which would leave it for the heartbeat TTL to find."""
        if self.get_state() != WorkerStatus.BUSY:
            super().request_force_stop(signum, frame)
            return
        if time.monotonic() - self._stop_signal_at < 1.0:
            return  # the same stop, sent twice (as RQ also ignores it)
        log.warning("worker %s: handing the running stage back now", self.name)
        current().jobs.hand_back_after(0.0)

    def handle_job_success(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry,
        execution: Execution,
    ) -> None:
        if not self._forget_superseded(job, execution):
            super().handle_job_success(job, queue, started_job_registry, execution)

    def handle_job_failure(
        self,
        job: Job,
        queue: Queue,
        started_job_registry: StartedJobRegistry | None = None,
        exc_string: str = "",
        execution: Execution | None = None,
    ) -> None:
        if not self._forget_superseded(job, execution):
            super().handle_job_failure(job, queue, started_job_registry, exc_string, execution)

    def _forget_superseded(self, job: Job, execution: Execution | None) -> bool:
        """When a newer attempt took this stage job's stage over (this worker hung past the
        heartbeat TTL and the stage job was retried elsewhere), drop only this execution:
        RQ's bookkeeping of the stage job (its status, result, retries) is the newer one's."""
        if not current().jobs.superseded(*job.args):
            return False
        log.warning("stage job %s: superseded by a newer attempt; its outcome is not kept", job.id)
        with self.connection.pipeline() as pipeline:
            self.cleanup_execution(job, pipeline=pipeline, execution=execution)
            pipeline.execute()
        return True

    def get_heartbeat_ttl(self, job: Job, working_time: float = 0.0) -> int:
        return self.heartbeat_ttl

    def run_maintenance_tasks(self) -> None:
        """RQ's maintenance (abandoned stages are retried here), then retention when due."""
        super().run_maintenance_tasks()
        try:
            runtime = current()
            collect_if_due(self.connection, runtime.store, runtime.settings)
        except Exception as error:  # retention must never stop a worker
            log.warning("retention failed: %s", error)

    @property
    def dequeue_timeout(self) -> int:
        """How long an idle worker blocks on its queues: RQ's worker_ttl - 15 s (405 s by
        default) would leave a dead worker's stage unfound that long, since maintenance (which
        retries abandoned stages) runs only between pops; so at most one maintenance interval."""
        return max(1, min(self.maintenance_interval, self.worker_ttl - 15))

    def dequeue_job_and_maintain_ttl(
        self, timeout: int | None, max_idle_time: int | None = None
    ) -> tuple[Job, Queue] | None:
        """RQ's dequeue, taking no stage while the result disk is under its floor (a stage
        started then could not store its images). A job popped as the disk filled, while this
        worker was blocked waiting, goes back to the front of its queue."""
        while True:
            self._wait_for_space()
            result = super().dequeue_job_and_maintain_ttl(timeout, max_idle_time)
            if result is None or space_shortfall(current().settings) is None:
                return result
            job, queue = result
            with self.connection.pipeline() as pipeline:
                pipeline.lrem(queue.intermediate_queue_key, 1, job.id)  # where LMOVE put it
                queue.push_job_id(job.id, pipeline=pipeline, at_front=True)
                pipeline.execute()

    def _wait_for_space(self) -> None:
        """Sleep while the result disk is under its floor, heartbeating (the worker stays
        alive and counted) and running maintenance (retention may free the space)."""
        settings, paused = current().settings, False
        # An idle worker counts as alive while it beats once per maintenance interval.
        interval = min(DISK_RECHECK, settings.maintenance_interval)
        while (shortfall := space_shortfall(settings)) is not None:
            if not paused:
                log.warning(
                    "%s: taking no stages until space is freed (checking every %g s)",
                    shortfall,
                    interval,
                )
                self.set_state(WorkerStatus.SUSPENDED)
                paused = True
            self.heartbeat()
            if self.should_run_maintenance_tasks:
                self.run_maintenance_tasks()
            time.sleep(interval)
        if paused:
            log.info("the result disk has space again: taking stages")

    def prepare_job_execution(self, job: Job, remove_from_intermediate_queue: bool = False) -> None:
        """RQ's bookkeeping before a job runs; the job leaves the intermediate list where
        `StageQueue` put it, for one queue or several (RQ itself only does so for one)."""
        super().prepare_job_execution(job, remove_from_intermediate_queue=True)

    def execute_job(self, job: Job, queue: Queue) -> None:
        runtime = current()
        execution = self.prepare_execution(job)  # in the started registry before anything else
        claimed = claim(self, queue, job, runtime, self.max_batch)
        running = {job.id: job, **{stage_job.id: stage_job for stage_job, _ in claimed}}
        if claimed:
            runtime.batch = Batch([job.args[0], *(stage_job.args[0] for stage_job, _ in claimed)])
        stop = threading.Event()
        beat = threading.Thread(target=self._beat, args=(running, stop), daemon=True)
        beat.start()
        try:
            self.perform_job(job, queue, execution)  # the lead: its run samples the batch
            for stage_job, stage_job_execution in claimed:
                self.perform_job(stage_job, queue, stage_job_execution)
            self.set_state(WorkerStatus.IDLE)
        finally:
            runtime.batch = None
            stop.set()
            beat.join()
            for stage_job in running.values():
                runtime.jobs.release(*stage_job.args)

    def _beat(self, running: dict[str, Job], stop: threading.Event) -> None:
        jobs = current().jobs
        while not stop.wait(self.job_monitoring_interval):
            for execution in list(self.executions.values()):
                job = running.get(execution.job_id)
                if job is None or stop.is_set():
                    continue
                try:
                    if jobs.superseded(*job.args):  # never revive an execution retried elsewhere
                        continue
                    self.maintain_heartbeats(job, execution)
                except Exception as error:  # a missed beat is retried next interval
                    log.warning("heartbeat for job %s failed: %s", job.id, error)


def parse_stages(text: str) -> list[str]:
    stages = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in stages if name not in STAGES]
    if not stages or unknown:
        raise ValueError(f"--stages takes a comma-separated subset of {list(STAGES)}, got {text!r}")
    return stages


def build_worker(
    settings: Settings,
    stages: list[str],
    connection: object,
    unloaded: dict[str, str] | None = None,
) -> StageWorker:
    # Later stages first: finishing jobs already in flight beats starting new ones.
    ordered = sorted(stages, key=STAGES.index, reverse=True)
    return StageWorker(
        [worker_queue(connection, name) for name in ordered],
        connection=connection,
        serializer=JSONSerializer,
        queue_class=StageQueue,
        heartbeat_ttl=settings.heartbeat_ttl,
        max_batch=settings.max_batch,
        unloaded=unloaded,
        stop_grace=settings.stop_grace,
        job_monitoring_interval=settings.heartbeat_interval,
        maintenance_interval=settings.maintenance_interval,
        worker_ttl=settings.worker_ttl,
    )


def main(args: argparse.Namespace) -> None:
    """Load the served stages' models, then take jobs until stopped (or idle, with --burst)."""
    settings = get_settings()
    stages = parse_stages(args.stages)
    if args.check:
        raise SystemExit(check(connect(settings), stages, settings.worker_fresh_seconds))
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)  # workers sharing CPUs contend otherwise
    connection = connect(settings)
    wait_for_redis(connection, settings)
    runtime = Runtime(settings, connection)
    install(runtime)
    wait_for_store(runtime.store, settings)  # a missing bucket: created, or waited for
    remember_served(connection, stages)  # asked for, loaded or not: the deployment serves them
    serving = [name for name in stages if runtime.try_load(name)]
    random = [name for name in serving if runtime.stages[name].model.random_weights]
    if not serving:
        log.error(
            "no stage loaded (%s); serving nothing, reporting why until stopped",
            "; ".join(runtime.unloaded.values()),
        )
        if not args.burst:
            report(settings, connection, runtime.unloaded)
        return
    log.info(
        "serving %s on %s%s%s",
        ", ".join(serving),
        runtime.device,
        f"; RANDOM weights in {', '.join(random)}" if random else "",
        f"; NOT serving {', '.join(runtime.unloaded)} (weights did not load)"
        if runtime.unloaded
        else "",
    )
    work(settings, serving, connection, burst=args.burst, unloaded=runtime.unloaded)


def work(
    settings: Settings,
    stages: list[str],
    connection: Redis,
    *,
    burst: bool,
    unloaded: dict[str, str] | None = None,
) -> None:
    """Take jobs until stopped. RQ's loop quits on any Redis error (an outage, a failover); here
    it is restarted as a fresh worker once Redis answers again, so a worker never exits because
    Redis went away. A stage the outage interrupted is abandoned and retried by maintenance."""
    while True:
        worker = build_worker(settings, stages, connection, unloaded)
        log.info("worker %s listening", worker.name)
        try:
            worker.work(burst=burst, logging_level="INFO")
        except (RedisConnectionError, RedisTimeoutError) as error:  # from RQ's teardown
            log.warning("worker %s lost Redis while stopping: %s", worker.name, error)
        except ResponseError as error:
            if not str(error).startswith("MISCONF"):
                raise
            # Redis refuses writes while it cannot persist (its own disk is full): ride it out
            # like an outage instead of exiting, which would only crash-loop.
            log.warning("worker %s: Redis cannot save its data: %s", worker.name, error)
        if stop_requested(worker) or burst:  # SIGINT/SIGTERM (RQ's own handlers), or done
            return
        log.warning("worker %s stopped (Redis unreachable?); starting again", worker.name)
        wait_for_redis(connection, settings)


def report(settings: Settings, connection: Redis, unloaded: dict[str, str]) -> None:
    """Serve no queue, only stay registered, saying which stages did not load and why, until
    SIGINT/SIGTERM: exiting would make a supervisor restart the worker into the same failure,
    and the API would lose the reason. Redis outages are ridden out like `work`'s."""
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    while not stop.is_set():
        worker = build_worker(settings, [], connection, unloaded)
        try:
            worker.register_birth()
            log.info("worker %s registered, serving no stage", worker.name)
            while not stop.wait(settings.heartbeat_interval):
                worker.heartbeat()
            worker.register_death()
            log.info("worker %s stopped", worker.name)
        except (RedisConnectionError, RedisTimeoutError) as error:
            log.warning("worker %s lost Redis (%s); registering again", worker.name, error)
            stop.wait(settings.redis_backoff_max)


def check(connection: Redis, stages: list[str], fresh_seconds: int) -> int:
    """A container's health check: 0 when a worker on this host listening on one of `stages`
    has beaten its heartbeat in the last `fresh_seconds`, else 1 (said on stderr)."""
    host = socket.gethostname()
    try:
        alive = [
            worker
            for stage in stages
            for worker in Worker.all(queue=stage_queue(connection, stage))
            if worker.hostname == host and worker_alive(connection, worker.name, fresh_seconds)
        ]
    except (RedisConnectionError, RedisTimeoutError) as error:
        print(f"unhealthy: cannot reach Redis: {error}", file=sys.stderr)
        return 1
    if alive:
        return 0
    print(
        f"unhealthy: no worker on {host} serving {', '.join(stages)} has beaten its heartbeat "
        f"in the last {fresh_seconds} s",
        file=sys.stderr,
    )
    return 1


def register(commands: argparse._SubParsersAction) -> None:
    """`cascade worker` (a `cascade.commands` entry point)."""
    worker = commands.add_parser("worker", help="serve stage queues")
    worker.add_argument("--stages", default=",".join(STAGES))
    worker.add_argument("--burst", action="store_true", help="exit when the queues are empty")
    worker.add_argument(
        "--check",
        action="store_true",
        help="health check: exit 0 if a worker on this host serving --stages has a fresh heartbeat",
    )
    worker.set_defaults(run=main)
