"""A job's life: its state machine, the one place that starts, moves and ends a job.

The API creates a job and may cancel it; stage workers start its stages, report their progress
and outcomes, and hand it on. Ending a job (succeeded, failed, canceled) goes through one path,
`Jobs.end`, whichever side ends it: a Lua script ends the record once (a cancel racing a
finishing stage has one winner) and, in the same step, ends the stages it stopped (the running
one failed or canceled, never left running; on a cancel, those that never started). Then the
hand-off tensors are dropped, job.json is written beside the images, the job's view at its end
becomes its terminal event, and its webhook is queued. A job's steps stop counting once it has
ended, so its progress never goes backwards.
Every state change written here also goes to the job's event log (`jobs.events`).

Each stage attempt holds a lease: starting a stage increments `{stage}.attempts` in the same
script that marks it running, and that number is the attempt's fencing token. A worker's writes
for the stage (progress, its hand-off tensor, its outcome, a retry, a failure) are scripts that
check the token first, so an attempt whose stage was handed to a newer one (its worker hung past
the heartbeat TTL, then resumed) writes nothing and learns at its next sampler step to stop.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping, Sequence
from typing import Literal

from redis import Redis

from jobs import scripts
from jobs.events import PROGRESS_INTERVAL, EventLog, EventType
from jobs.record import CARRIED, JobRecord, NewJob, job_key, tensor_key
from jobs.settings import Settings, get_settings
from jobs.stats import queued_at, record_job, record_wait
from jobs.status import JobStatus, StageStatus
from jobs.store import RECORD, Store, handoff_object, object_name
from jobs.urls import RELATIVE, job_urls
from jobs.view import describe
from jobs.webhooks import enqueue_delivery

log = logging.getLogger(__name__)
# A hand-off kept in the result store: Redis holds these bytes and the object's name. Real
# hand-offs are safetensors bytes, which start with an 8-byte header length, never with this.
HANDOFF_REFERENCE = b"cascade-store:"
TerminalStatus = Literal[JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED]


class Jobs:
    """Job records in Redis: created by the API, advanced by stage workers.

    A worker's instance remembers the stage leases it holds (module doc): its writes for a stage
    it started are fenced by that attempt's number, until `release`. With a `store`, a job's
    end writes job.json there, with `about` (the worker's library versions) added."""

    def __init__(
        self,
        connection: Redis,
        ttl: int,
        *,
        settings: Settings | None = None,
        store: Store | None = None,
        about: Mapping[str, object] | None = None,
    ):
        self.connection = connection
        self.ttl = ttl
        self.settings = settings
        self.store = store
        self.urls = RELATIVE if settings is None else job_urls(settings, store)
        self.about = dict(about or {})
        self._end = connection.register_script(scripts.END)
        self._update_if_active = connection.register_script(scripts.UPDATE_IF_ACTIVE)
        self._start_stage = connection.register_script(scripts.START_STAGE)
        self._write_fenced = connection.register_script(scripts.WRITE_FENCED)
        self._progress = connection.register_script(scripts.PROGRESS)
        self._put_fenced = connection.register_script(scripts.PUT_FENCED)
        self.events = EventLog(connection, ttl)
        self._progress_sent: dict[tuple[str, str], float] = {}  # (job, stage) -> monotonic time
        self.leases: dict[tuple[str, str], int] = {}  # (job, stage) -> the attempt started here
        self.hand_back_at: float | None = None  # monotonic time: this process is stopping

    def _event(self, job_id: str, type: EventType, data: dict[str, object]) -> str | None:
        """Log an event of a job still active (nothing follows a job's terminal event)."""
        return self.events.append(job_key(job_id), job_id, type, data)

    def create(self, job: NewJob) -> None:
        fields: dict[str, str] = {
            "id": job.id,
            "kind": job.kind,
            "request": json.dumps(job.request),
            "seed": str(job.seed),
            "plan": json.dumps([stage.to_dict() for stage in job.plan]),
            "output": json.dumps(list(job.output)),
            "status": JobStatus.QUEUED.value,
            "stage": job.plan[0].name,
            "created_at": repr(time.time()),
            "webhook_url": job.webhook_url or "",
            "owner": job.owner,
            "request_id": job.request_id,
            "traceparent": job.traceparent,
        }
        for index, stage in enumerate(job.plan):
            fields[f"{stage.name}.status"] = (
                StageStatus.QUEUED if index == 0 else StageStatus.PENDING
            )
            fields[f"{stage.name}.attempts"] = "0"
        with self.connection.pipeline() as pipeline:
            pipeline.hset(job_key(job.id), mapping=fields)
            pipeline.expire(job_key(job.id), self.ttl)
            pipeline.execute()
        stages = [stage.to_dict() for stage in job.plan]
        data = {"status": JobStatus.QUEUED.value, "kind": job.kind, "stages": stages}
        self._event(job.id, "queued", data)

    def get(self, job_id: str) -> JobRecord | None:
        fields = self.connection.hgetall(job_key(job_id))
        if not fields:
            return None
        return JobRecord({_text(key): _text(value) for key, value in fields.items()})

    def update(self, job_id: str, fields: dict[str, object]) -> bool:
        """Write fields unless the job has ended; False when it had (or does not exist)."""
        args: list[str] = []
        for key, value in fields.items():
            args += [key, "" if value is None else str(value)]
        return bool(self._update_if_active(keys=[job_key(job_id)], args=args))

    def write(self, job_id: str, fields: dict[str, object]) -> None:
        """Write fields whatever the job's status (a repair by hand; never a state change)."""
        if self.connection.exists(job_key(job_id)):
            mapping = {key: "" if value is None else str(value) for key, value in fields.items()}
            self.connection.hset(job_key(job_id), mapping=mapping)

    def stage_started(self, job_id: str, stage: str, model: dict[str, object], worker: str) -> int:
        """Mark a stage running as one more attempt and hold its lease: the attempt's number,
        or 0 when the job has ended meanwhile or the stage has already succeeded. `model` is the
        worker's description of the stage's model (`workers.runtime`)."""
        weights: dict[str, object] = model.get("weights") or {}  # type: ignore[assignment]
        now = repr(time.time())
        fields: dict[str, object] = {
            "status": JobStatus.RUNNING,
            "stage": stage,
            f"{stage}.status": StageStatus.RUNNING,
            f"{stage}.started_at": now,
            f"{stage}.ended_at": "",
            f"{stage}.step": 0,
            f"{stage}.total": "",
            f"{stage}.model": model.get("model"),
            f"{stage}.random_weights": int(bool(model.get("random_weights"))),
            f"{stage}.worker": worker,
            # The weights by file name and SHA-256, and the host: never a host's folders.
            f"{stage}.weights_file": weights.get("file"),
            f"{stage}.weights_sha256": weights.get("sha256"),
            f"{stage}.host": model.get("host"),
        }
        attempts = int(
            self._start_stage(keys=[job_key(job_id)], args=[stage, now, *_pairs(fields)])
        )
        if attempts == 1:  # its wait in the queue: since the job was made, or the stage before
            self._record_wait(job_id, stage, float(now))
        if attempts:
            self.leases[(job_id, stage)] = attempts
            self._progress_sent.pop((job_id, stage), None)
            data = {
                "stage": stage,
                "attempt": attempts,
                "worker": worker,
                "model": model.get("model"),
                "random_weights": bool(model.get("random_weights")),
            }
            self._event(job_id, "stage_started", data)
        return attempts

    def _record_wait(self, job_id: str, stage: str, started: float) -> None:
        record = self.get(job_id)
        queued = None if record is None else queued_at(record, stage)
        if queued is not None:
            record_wait(self.connection, stage, started - queued)

    def _lease(self, job_id: str, stage: str) -> list[str]:
        """The lease field and this process's lease on it ("" when it holds none)."""
        lease = self.leases.get((job_id, stage))
        return [f"{stage}.attempts", "" if lease is None else str(lease)]

    def superseded(self, job_id: str, stage: str) -> bool:
        """Whether this process started the stage and a newer attempt has since taken it."""
        lease = self.leases.get((job_id, stage))
        if lease is None:
            return False
        current = self.connection.hget(job_key(job_id), f"{stage}.attempts")
        return current is not None and int(current) != lease

    def release(self, job_id: str, stage: str) -> None:
        """Forget the stage's lease once its stage job's bookkeeping is done."""
        self.leases.pop((job_id, stage), None)
        self._progress_sent.pop((job_id, stage), None)

    def hand_back_after(self, seconds: float) -> None:
        """This process is stopping: the stages it runs stop at their first sampler step
        `seconds` from now (or sooner, if asked before), to be handed back."""
        deadline = time.monotonic() + seconds
        self.hand_back_at = min(deadline, self.hand_back_at or deadline)

    @property
    def handing_back(self) -> bool:
        return self.hand_back_at is not None and time.monotonic() >= self.hand_back_at

    def progress(
        self,
        job_ids: Sequence[str],
        stage: str,
        step: int,
        total: int,
        previews: Mapping[str, str] | None = None,
    ) -> list[str]:
        """Record a finished sampler step of the jobs sampled together (one round trip); the
        ids of those that must stop: ended meanwhile (canceled), taken over by a newer attempt
        (nothing is written for them), or all of them once this process hands its stages back.
        A progress event is logged for a stage's first and last step, for a step with a job's
        live preview (a data URL, carried in the event only, never in the record), and in
        between at most every `PROGRESS_INTERVAL` s."""
        if self.handing_back:
            return list(job_ids)
        fields = {f"{stage}.step": step, f"{stage}.total": total, f"{stage}.batch": len(job_ids)}
        with self.connection.pipeline() as pipeline:
            for job_id in job_ids:
                args = [*self._lease(job_id, stage), *_pairs(fields)]
                self._progress(keys=[job_key(job_id)], args=args, client=pipeline)
            replies = pipeline.execute()
        stop = [job_id for job_id, reply in zip(job_ids, replies, strict=True) if reply]
        now = time.monotonic()
        for job_id in job_ids:
            sent = self._progress_sent.get((job_id, stage))
            due = step <= 1 or step >= total or sent is None or now - sent >= PROGRESS_INTERVAL
            preview = (previews or {}).get(job_id)
            if job_id in stop or not (due or preview):
                continue
            if step >= total:
                self._progress_sent.pop((job_id, stage), None)
            else:
                self._progress_sent[(job_id, stage)] = now
            record = self.get(job_id)
            if record is not None:
                view = describe(record, urls=self.urls)
                data = {
                    "stage": stage,
                    "step": step,
                    "steps": total,
                    "progress": view["progress"],
                    "eta_seconds": view["eta_seconds"],
                }
                if preview:
                    data["preview"] = preview
                self._event(job_id, "progress", data)
        return stop

    def _write_stage(
        self, job_id: str, stage: str, fields: dict[str, object], active: bool
    ) -> bool:
        """Write the stage's fields if this process's lease (if it holds one) is still the
        stage's, and (when `active`) the job has not ended."""
        args = [*self._lease(job_id, stage), "1" if active else "0", *_pairs(fields)]
        return bool(self._write_fenced(keys=[job_key(job_id)], args=args))

    def stage_ended(self, job_id: str, stage: str, status: StageStatus) -> bool:
        """A stage's outcome while the job is active (once it has ended, its end has ended the
        stage); False, writing nothing, when the job has ended or a newer attempt holds the
        stage. A success is logged with the stage's preview."""
        self._progress_sent.pop((job_id, stage), None)
        now = time.time()
        fields = {f"{stage}.status": status, f"{stage}.ended_at": repr(now)}
        if not self._write_stage(job_id, stage, fields, active=True):
            return False
        if status == StageStatus.SUCCEEDED:
            started = self.connection.hget(job_key(job_id), f"{stage}.started_at")
            data = {
                "stage": stage,
                "seconds": round(now - float(started), 3) if started else None,
                "preview": self.urls.job(job_id, f"/stages/{stage}"),
            }
            self._event(job_id, "stage_finished", data)
        return True

    def stage_retrying(self, job_id: str, stage: str, reason: str) -> bool:
        """A crashed or handed-back stage queued again; False when the job has ended meanwhile
        or a newer attempt holds the stage."""
        self._progress_sent.pop((job_id, stage), None)
        fields = {f"{stage}.status": StageStatus.QUEUED, f"{stage}.error": f"retrying: {reason}"}
        retrying = self._write_stage(job_id, stage, fields, active=True)
        if retrying:
            self._event(job_id, "stage_retrying", {"stage": stage, "error": reason})
        return retrying

    def advance(self, job_id: str, next_stage: str) -> bool:
        """Mark the next stage queued; False when the job has ended (do not enqueue it)."""
        return self.update(
            job_id, {"stage": next_stage, f"{next_stage}.status": StageStatus.QUEUED}
        )

    def end(
        self,
        job_id: str,
        status: TerminalStatus,
        error: str | None = None,
        *,
        stage: str | None = None,
        stage_error: str | None = None,
    ) -> bool:
        """End the job once (the first caller wins; False for the others): success, failure
        and cancel all come here. `stage` is the one that failed it (fenced by this process's
        lease on it), which shows `stage_error`. The record and its log then live `ttl` more
        seconds (module doc: what an end does)."""
        record = self.get(job_id)
        if record is None:
            return False
        names = [planned.name for planned in record.plan]
        lease = [stage, self._lease(job_id, stage)[1]] if stage else ["", ""]
        now = repr(time.time())
        args = [status, now, error or "", *lease, self.ttl, stage_error or "", *names]
        if not self._end(keys=[job_key(job_id)], args=args):
            return False
        for name in names:
            self._progress_sent.pop((job_id, name), None)
        self.drop_tensors(job_id, ["input", CARRIED, *names])
        ended = self.get(job_id) or record
        created = ended.time("created_at")
        if created is not None:
            record_job(self.connection, ended.kind, status, float(now) - created)
        view = describe(ended, urls=self.urls)
        # job.json before the terminal event: a client that waits on the event finds the file.
        self._save_record(ended, view)
        self.events.append(job_key(job_id), job_id, status, view, while_active=False)
        if ended.webhook_url:
            settings = self.settings or get_settings()
            enqueue_delivery(self.connection, settings, job_id, ended.webhook_url)
        return True

    def _save_record(self, record: JobRecord, view: dict[str, object]) -> None:
        """job.json beside the PNGs: request, seed, plan, models, timings, enough to reproduce;
        a store that cannot take it is logged, and the job has ended all the same."""
        if self.store is None:
            return
        # Each stage's weights by file name and SHA-256 and the host that ran it, from the
        # record (stages may run on different hosts); never a host's folders.
        stages: list[dict[str, object]] = view["stages"]  # type: ignore[assignment]
        weights = {
            stage["name"]: {
                **(stage["weights"] or {"file": None, "sha256": None}),
                "host": stage["host"],
            }
            for stage in stages
        }
        body = json.dumps({**view, "weights": weights, **self.about}, indent=2).encode()
        try:
            self.store.put(object_name(record.id, RECORD), body, "application/json")
        except Exception:
            log.exception("job %s: job.json could not be written to the result store", record.id)

    def put_tensor(self, job_id: str, name: str, data: bytes, ttl: int) -> bool:
        """Store a stage's output (or an upload) for the next stage; False, storing nothing in
        Redis, when a newer attempt holds that stage. Above `handoff_inline_bytes` the data goes
        to the result store and Redis keeps a reference (`HANDOFF_REFERENCE` + object name)."""
        keys = [job_key(job_id), tensor_key(job_id, name)]
        limit = (self.settings or get_settings()).handoff_inline_bytes
        if self.store is not None and len(data) > limit:
            if self.superseded(job_id, name):
                return False
            key = object_name(job_id, handoff_object(name))
            self.store.put(key, data, "application/octet-stream")
            data = HANDOFF_REFERENCE + key.encode()
        return bool(self._put_fenced(keys=keys, args=[*self._lease(job_id, name), data, ttl]))

    def get_tensor(self, job_id: str, name: str) -> bytes | None:
        """A hand-off's bytes, from Redis or the store its reference names; None when gone."""
        data = self.connection.get(tensor_key(job_id, name))
        stored = _stored(data)
        if stored is None:
            return data
        if self.store is None:
            raise RuntimeError(f"job {job_id}: hand-off {name} is in the result store, none given")
        return self.store.get(stored)

    def drop_tensors(self, job_id: str, names: list[str]) -> None:
        """Free hand-off tensors once nothing will read them (they would expire anyway; the
        store's copies go with the job's folder at retention)."""
        keys = [tensor_key(job_id, name) for name in names]
        stored = [_stored(data) for data in self.connection.mget(keys)]
        self.connection.delete(*keys)
        for key in stored:
            if key is not None and self.store is not None:
                try:
                    self.store.delete(key)
                except OSError as error:  # the store is down: retention deletes it later
                    log.warning("job %s: hand-off not deleted from the store: %s", job_id, error)


def _stored(data: bytes | None) -> str | None:
    """The store object a hand-off's Redis value refers to; None for inline data (or none)."""
    if data is None or not data.startswith(HANDOFF_REFERENCE):
        return None
    return data[len(HANDOFF_REFERENCE) :].decode()


def _pairs(fields: dict[str, object]) -> list[str]:
    """A mapping as the flat field/value list HSET takes (None as "")."""
    return [
        item for key, value in fields.items() for item in (key, "" if value is None else str(value))
    ]


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
