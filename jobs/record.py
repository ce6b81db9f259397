"""The job record: one Redis hash per job (`cascade:job:{id}`), the union of its stage jobs.

The API creates and reads it; stage workers update it (stage status, step, timings, models).
Per-stage fields are named `{stage}.{field}` so a worker updates its stage without reading and
rewriting the rest. Ending a job (succeeded, failed, canceled) happens once: a Lua script refuses
to change a record that has already ended, so a cancel racing a finishing stage has one winner.
Every state change written here also goes to the job's event log (`jobs.events`), ending with
one terminal event that carries the job's view at its end.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from redis import Redis

from jobs.events import PROGRESS_INTERVAL, EventLog, EventType
from jobs.plan import PlannedStage
from jobs.view import describe

JobStatus = Literal["queued", "running", "succeeded", "failed", "canceled"]
TerminalStatus = Literal["succeeded", "failed", "canceled"]
TERMINAL: tuple[str, ...] = ("succeeded", "failed", "canceled")

_UPDATE_IF_ACTIVE = """
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or status == 'succeeded' or status == 'failed' or status == 'canceled' then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""


def job_key(job_id: str) -> str:
    return f"cascade:job:{job_id}"


def tensor_key(job_id: str, name: str) -> str:
    """Where a stage's float output (or an upload, name "input") waits for the next stage."""
    return f"cascade:tensor:{job_id}:{name}"


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


class Jobs:
    """Job records in Redis: created by the API, advanced by stage workers."""

    def __init__(self, connection: Redis, ttl: int):
        self.connection = connection
        self.ttl = ttl
        self._update_if_active = connection.register_script(_UPDATE_IF_ACTIVE)
        self.events = EventLog(connection, ttl)
        self._progress_sent: dict[tuple[str, str], float] = {}  # (job, stage) -> monotonic time

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
            "status": "queued",
            "stage": job.plan[0].name,
            "created_at": repr(time.time()),
            "webhook_url": job.webhook_url or "",
            "owner": job.owner,
            "request_id": job.request_id,
        }
        for index, stage in enumerate(job.plan):
            fields[f"{stage.name}.status"] = "queued" if index == 0 else "pending"
            fields[f"{stage.name}.attempts"] = "0"
        with self.connection.pipeline() as pipeline:
            pipeline.hset(job_key(job.id), mapping=fields)
            pipeline.expire(job_key(job.id), self.ttl)
            pipeline.execute()
        stages = [stage.to_dict() for stage in job.plan]
        self._event(job.id, "queued", {"status": "queued", "kind": job.kind, "stages": stages})

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
        """Write fields whatever the job's status (a stage's own outcome after a cancel)."""
        if self.connection.exists(job_key(job_id)):
            mapping = {key: "" if value is None else str(value) for key, value in fields.items()}
            self.connection.hset(job_key(job_id), mapping=mapping)

    def stage_started(self, job_id: str, stage: str, model: dict[str, object], worker: str) -> bool:
        """Mark a stage running (one more attempt); False when the job has ended meanwhile.
        `model` is the worker's description of the stage's model (`workers.runtime`)."""
        weights: dict[str, object] = model.get("weights") or {}  # type: ignore[assignment]
        now = repr(time.time())
        self.connection.hsetnx(job_key(job_id), "started_at", now)
        attempts = self.connection.hincrby(job_key(job_id), f"{stage}.attempts", 1)
        started = self.update(
            job_id,
            {
                "status": "running",
                "stage": stage,
                f"{stage}.status": "running",
                f"{stage}.attempts": attempts,
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
            },
        )
        if started:
            self._progress_sent.pop((job_id, stage), None)
            data = {
                "stage": stage,
                "attempt": attempts,
                "worker": worker,
                "model": model.get("model"),
                "random_weights": bool(model.get("random_weights")),
            }
            self._event(job_id, "stage_started", data)
        return started

    def progress(self, job_ids: Sequence[str], stage: str, step: int, total: int) -> list[str]:
        """Record a finished sampler step of the jobs sampled together (one round trip); the
        ids of those that have ended meanwhile (canceled). A progress event is logged for a
        stage's first and last step, and in between at most every `PROGRESS_INTERVAL` s."""
        fields = {f"{stage}.step": step, f"{stage}.total": total, f"{stage}.batch": len(job_ids)}
        with self.connection.pipeline() as pipeline:
            for job_id in job_ids:
                pipeline.hset(job_key(job_id), mapping=fields)
                pipeline.hget(job_key(job_id), "status")
            replies = pipeline.execute()
        statuses = replies[1::2]
        ended = [
            job_id
            for job_id, status in zip(job_ids, statuses, strict=True)
            if status is None or _text(status) in TERMINAL
        ]
        now = time.monotonic()
        for job_id in job_ids:
            sent = self._progress_sent.get((job_id, stage))
            due = step <= 1 or step >= total or sent is None or now - sent >= PROGRESS_INTERVAL
            if job_id in ended or not due:
                continue
            if step >= total:
                self._progress_sent.pop((job_id, stage), None)
            else:
                self._progress_sent[(job_id, stage)] = now
            record = self.get(job_id)
            if record is not None:
                view = describe(record)
                data = {
                    "stage": stage,
                    "step": step,
                    "steps": total,
                    "progress": view["progress"],
                    "eta_seconds": view["eta_seconds"],
                }
                self._event(job_id, "progress", data)
        return ended

    def stage_ended(self, job_id: str, stage: str, status: str, error: str | None = None) -> None:
        """A stage's outcome: succeeded, failed or canceled. A success is logged with the
        stage's preview; a failure or cancel is told by the job's terminal event."""
        self._progress_sent.pop((job_id, stage), None)
        now = time.time()
        fields = {
            f"{stage}.status": status,
            f"{stage}.ended_at": repr(now),
            f"{stage}.error": error,
        }
        self.write(job_id, fields)
        if status == "succeeded":
            started = self.connection.hget(job_key(job_id), f"{stage}.started_at")
            data = {
                "stage": stage,
                "seconds": round(now - float(started), 3) if started else None,
                "preview": f"/v1/jobs/{job_id}/stages/{stage}",
            }
            self._event(job_id, "stage_finished", data)

    def stage_retrying(self, job_id: str, stage: str, reason: str) -> bool:
        """A crashed stage queued again; False when the job has ended meanwhile."""
        self._progress_sent.pop((job_id, stage), None)
        retrying = self.update(
            job_id, {f"{stage}.status": "queued", f"{stage}.error": f"retrying: {reason}"}
        )
        if retrying:
            self._event(job_id, "stage_retrying", {"stage": stage, "error": reason})
        return retrying

    def advance(self, job_id: str, next_stage: str) -> bool:
        """Mark the next stage queued; False when the job has ended (do not enqueue it)."""
        return self.update(job_id, {"stage": next_stage, f"{next_stage}.status": "queued"})

    def finish(self, job_id: str, status: TerminalStatus, error: str | None = None) -> bool:
        """End the job once (the first caller wins): a cancel also marks the stages that never
        started canceled, then the job's view at its end becomes its terminal event. The record
        and its log then live `ttl` more seconds."""
        now = repr(time.time())
        ended = self.update(job_id, {"status": status, "ended_at": now, "error": error})
        if not ended:
            return False
        self.connection.expire(job_key(job_id), self.ttl)
        record = self.get(job_id)
        if record is None:
            return True
        if status == "canceled":
            waiting: dict[str, object] = {}
            for planned in record.plan:
                if record.stage(planned.name, "status") in ("queued", "pending"):
                    waiting[f"{planned.name}.status"] = "canceled"
                    waiting[f"{planned.name}.ended_at"] = now
            if waiting:
                self.write(job_id, waiting)
                record = self.get(job_id) or record
        self.events.append(job_key(job_id), job_id, status, describe(record), while_active=False)
        return True

    def put_tensor(self, job_id: str, name: str, data: bytes, ttl: int) -> None:
        self.connection.set(tensor_key(job_id, name), data, ex=ttl)

    def get_tensor(self, job_id: str, name: str) -> bytes | None:
        return self.connection.get(tensor_key(job_id, name))

    def drop_tensors(self, job_id: str, names: list[str]) -> None:
        """Free hand-off tensors once nothing will read them (they would expire anyway)."""
        self.connection.delete(*(tensor_key(job_id, name) for name in names))


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
