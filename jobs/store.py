"""The result store: the final image (PNG, WebP or JPEG), per-stage PNG previews and a JSON
record per job.

A local folder by default; an S3-compatible bucket (`s3://bucket/prefix`) when API and workers
run on different machines. Torch-free: the API reads images from here too. boto3 is imported only
when an S3 store is opened, so the API image needs it only for S3 deployments.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, TypeVar

from cascade.stages import EXTENSIONS
from jobs.settings import Settings

log = logging.getLogger(__name__)
T = TypeVar("T")

RESULT = "result.png"  # a PNG result's name (`result_name`: the others')
RECORD = "job.json"
JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4 hex (`api.submit.new_job_id`): all retention touches
MB = 10**6
FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device; the user's quota exhausted


def object_name(job_id: str, name: str) -> str:
    """A job's file in the store: `{job_id}/{name}` (result.png, base64.png, job.json)."""
    if "/" in job_id or job_id in ("", ".", ".."):
        raise ValueError(f"not a job id: {job_id!r}")
    return f"{job_id}/{name}"


def result_name(format: str = "png") -> str:
    """The result's file in a job's folder: result.png, result.webp or result.jpg."""
    return f"result.{EXTENSIONS[format]}"


def handoff_object(stage: str) -> str:
    """A hand-off tensor kept in the store (above `handoff_inline_bytes`): `{stage}.tensor`."""
    return f"{stage}.tensor"


def stage_preview(stage: str) -> str:
    return f"{stage}.png"


def megabytes(count: int) -> str:
    """`count` bytes in MB as people read it: one decimal, three below 0.1 MB."""
    return f"{count / MB:.1f}" if count >= MB / 10 else f"{count / MB:.3f}"


class DiskFull(OSError):
    """A store write failed for want of space or quota: it fails again until space is freed, so
    no retry can mend it."""

    def __init__(self, code: int, free_bytes: int | None):
        super().__init__(code, os.strerror(code))
        self.free_bytes = free_bytes

    def __str__(self) -> str:
        if self.free_bytes is None:
            return "the result disk is full"
        return f"the result disk is full ({megabytes(self.free_bytes)} MB free)"


class StoreUnavailable(OSError):
    """The store could not be reached or refused for now (a connection error, a timeout,
    throttling, a 5xx, a bucket not there yet): an OSError, so a stage that meets it is retried
    like one whose worker was lost, and a download answers 503."""


class BucketMissing(StoreUnavailable):
    """The bucket does not exist (yet): someone may still create it."""


NO_BUCKET = "does not exist"  # in the problem `S3Store.check` names for a missing bucket

# S3 error codes a later call may not meet: throttling, and the service's own trouble.
TRANSIENT_CODES = frozenset(
    {
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestThrottledException",
        "TooManyRequestsException",
        "ProvisionedThroughputExceededException",
        "TransactionInProgressException",
        "RequestLimitExceeded",
        "BandwidthLimitExceeded",
        "LimitExceededException",
        "RequestThrottled",
        "SlowDown",
        "PriorRequestNotComplete",
        "EC2ThrottledException",
        "RequestTimeout",
        "RequestTimeoutException",
        "InternalError",
        "ServiceUnavailable",
    }
)


class Store(Protocol):
    """Where results live; keys come from `object_name`."""

    def put(self, key: str, data: bytes, content_type: str) -> str: ...

    def get(self, key: str) -> bytes | None: ...

    def delete(self, key: str) -> None: ...

    def delete_older_than(self, cutoff: float) -> list[str]: ...

    def check(self) -> str | None: ...


class LocalStore:
    """A folder; files appear atomically (written aside, then renamed) so readers never see
    half a PNG."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def put(self, key: str, data: bytes, content_type: str) -> str:
        """Write `data` under `key`; on any failure nothing is left behind (a stray temporary
        would eat the space freed for the next try), and a full disk raises `DiskFull`."""
        path = self.root / key
        temporary = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            with os.fdopen(handle, "wb") as file:
                file.write(data)
            os.replace(temporary, path)
        except BaseException as error:  # a job timeout mid-write must not leave it either
            if temporary is not None:
                try:
                    os.unlink(temporary)
                except FileNotFoundError:
                    pass  # os.replace had already moved it
            if isinstance(error, OSError) and error.errno in FULL:
                raise DiskFull(error.errno, free_bytes(self.root)) from error
            raise
        return str(path)

    def get(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None

    def delete(self, key: str) -> None:
        (self.root / key).unlink(missing_ok=True)

    def delete_older_than(self, cutoff: float) -> list[str]:
        """Delete each job folder whose newest file is older than `cutoff` (a Unix time); the
        job ids deleted. Only job-id folders are touched (never `.redis/` or anything else)."""
        deleted = []
        if not self.root.is_dir():
            return deleted
        for folder in self.root.iterdir():
            if not folder.is_dir() or not JOB_ID.fullmatch(folder.name):
                continue
            times = [path.stat().st_mtime for path in folder.iterdir()] or [folder.stat().st_mtime]
            if max(times) < cutoff:
                shutil.rmtree(folder, ignore_errors=True)
                deleted.append(folder.name)
        return deleted

    def check(self) -> str | None:
        """Why the store cannot be used now; None (a folder is created on its first write)."""
        return None


def classify(error: Exception, bucket: str) -> Exception:
    """A botocore error as the store's own: `BucketMissing` or `StoreUnavailable` when a later
    call may succeed, else `error` unchanged (a denied access, a bad request: a bug or a setting
    to fix, which no retry mends)."""
    from botocore.exceptions import BotoCoreError, ClientError

    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if code == "NoSuchBucket":
            return BucketMissing(errno.ENOENT, f"the bucket {bucket!r} {NO_BUCKET}")
        if code in TRANSIENT_CODES or int(status) >= 500:
            return StoreUnavailable(errno.EAGAIN, f"the S3 store answered {code or status}")
        return error
    if isinstance(error, BotoCoreError):  # connection refused or reset, timeouts, DNS
        return StoreUnavailable(errno.ECONNREFUSED, f"the S3 store is unreachable: {error}")
    return error


class S3Store:
    """A bucket on S3 or any S3-compatible service (MinIO, R2, ...). Each call that meets a
    transient fault is tried again with a growing pause for up to `retry_seconds`, so a short
    outage only delays a stage; past that it raises `StoreUnavailable` (the stage is retried)."""

    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        client: object | None = None,
        *,
        retry_seconds: float = 0.0,
        probe: object | None = None,
    ):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client
        self.retry_seconds = retry_seconds
        self.probe = probe if probe is not None else client  # quick calls: /readyz must answer

    def key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def call(self, operation: Callable[..., T], **arguments: object) -> T:
        """`operation(**arguments)`, retried while its faults are transient, for at most
        `retry_seconds`."""
        deadline = time.monotonic() + self.retry_seconds
        pause = 0.5
        while True:
            try:
                return operation(**arguments)
            except Exception as error:
                mapped = classify(error, self.bucket)
                if not isinstance(mapped, StoreUnavailable):
                    raise
                left = deadline - time.monotonic()
                if left <= 0:
                    raise mapped from error
                log.warning("%s; trying again in %.1f s", mapped.strerror, min(pause, left))
                time.sleep(min(pause, left))
                pause = min(pause * 2, 5.0)

    def put(self, key: str, data: bytes, content_type: str) -> str:
        self.call(
            self.client.put_object,  # type: ignore[attr-defined]
            Bucket=self.bucket,
            Key=self.key(key),
            Body=data,
            ContentType=content_type,
        )
        return f"s3://{self.bucket}/{self.key(key)}"

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            return self.call(self._read, key=self.key(key))
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise

    def delete(self, key: str) -> None:
        # Deleting a missing key succeeds in S3 too.
        self.call(self.client.delete_object, Bucket=self.bucket, Key=self.key(key))  # type: ignore[attr-defined]

    def presigned_url(self, key: str, seconds: int) -> str:
        """A GET URL of the object that needs no credentials for `seconds` (signed here, from
        the client's credentials: no request is made)."""
        return self.client.generate_presigned_url(  # type: ignore[attr-defined]
            "get_object", Params={"Bucket": self.bucket, "Key": self.key(key)}, ExpiresIn=seconds
        )

    def _read(self, key: str) -> bytes:
        # Reading the body inside the retried call: the connection may drop mid-body too.
        response = self.client.get_object(Bucket=self.bucket, Key=key)  # type: ignore[attr-defined]
        return response["Body"].read()

    def check(self) -> str | None:
        """Why the bucket cannot be used now (missing, unreachable), asked once with short
        timeouts; None when it answers."""
        try:
            self.probe.head_bucket(Bucket=self.bucket)  # type: ignore[attr-defined]
        except Exception as error:
            if _is_404(error):
                return f"the bucket {self.bucket!r} {NO_BUCKET}"
            mapped = classify(error, self.bucket)
            return mapped.strerror if isinstance(mapped, OSError) else f"the S3 store: {error}"
        return None

    def create(self) -> None:
        """Create the bucket (already there, by this or another worker: fine)."""
        from botocore.exceptions import ClientError

        try:
            self.call(self.client.create_bucket, Bucket=self.bucket)  # type: ignore[attr-defined]
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                raise

    def delete_older_than(self, cutoff: float) -> list[str]:
        """Delete each job's objects when its newest is older than `cutoff` (a Unix time)."""
        start = f"{self.prefix}/" if self.prefix else ""
        jobs: dict[str, list[tuple[str, datetime]]] = {}
        paginator = self.client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        pages = self.call(lambda: list(paginator.paginate(Bucket=self.bucket, Prefix=start)))
        for page in pages:
            for item in page.get("Contents", []):
                job_id = item["Key"][len(start) :].partition("/")[0]
                if JOB_ID.fullmatch(job_id):
                    jobs.setdefault(job_id, []).append((item["Key"], item["LastModified"]))
        limit = datetime.fromtimestamp(cutoff, UTC)
        expired = [job for job, items in jobs.items() if max(when for _, when in items) < limit]
        keys = [{"Key": key} for job in expired for key, _ in jobs[job]]
        for index in range(0, len(keys), 1000):  # S3 deletes at most 1000 keys per call
            self.call(
                self.client.delete_objects,  # type: ignore[attr-defined]
                Bucket=self.bucket,
                Delete={"Objects": keys[index : index + 1000], "Quiet": True},
            )
        return expired


def _is_404(error: Exception) -> bool:
    """HEAD answers have no body: a missing bucket is a bare 404."""
    from botocore.exceptions import ClientError

    return isinstance(error, ClientError) and str(error.response.get("Error", {}).get("Code")) in (
        "404",
        "NoSuchBucket",
    )


def free_bytes(folder: str | Path) -> int | None:
    """Bytes this process may still write on the disk holding `folder` (or its nearest existing
    parent: the folder may not exist yet); None when that cannot be read."""
    path = Path(folder).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def space_shortfall(settings: Settings) -> str | None:
    """Why new work must wait for disk space: the local store's disk has less free than
    `min_free_mb`; None when it has enough, the floor is off, or the store is S3."""
    if settings.store.startswith("s3://") or not settings.min_free_mb:
        return None
    free = free_bytes(settings.store)
    if free is None or free >= settings.min_free_mb * MB:
        return None
    return (
        f"the result disk has {megabytes(free)} MB free, under the {settings.min_free_mb:g} MB "
        "kept free (CASCADE_MIN_FREE_MB)"
    )


def parse_s3_url(url: str) -> tuple[str, str]:
    """(bucket, prefix) of s3://bucket/prefix."""
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    if not bucket:
        raise ValueError(f"CASCADE_STORE {url!r}: expected s3://bucket or s3://bucket/prefix")
    return bucket, prefix


def open_store(settings: Settings, *, retry_seconds: float | None = None) -> Store:
    """The store `settings.store` names: a folder path, or s3://bucket/prefix; an S3 call is
    retried for `retry_seconds` (default `store_retry_seconds`)."""
    if not settings.store.startswith("s3://"):
        return LocalStore(settings.store)
    import boto3  # only S3 deployments need it
    from botocore.config import Config

    bucket, prefix = parse_s3_url(settings.store)
    secret = settings.s3_secret_access_key

    def client(timeout: float, attempts: int) -> object:
        return boto3.client(
            "s3",
            endpoint_url=settings.s3_endpoint_url,
            region_name=settings.s3_region,
            aws_access_key_id=settings.s3_access_key_id,
            aws_secret_access_key=secret.get_secret_value() if secret else None,
            config=Config(
                connect_timeout=timeout,
                read_timeout=timeout,
                retries={"mode": "standard", "total_max_attempts": attempts},
                signature_version="s3v4",  # presigned URLs too (boto3 may presign with v2)
            ),
        )

    return S3Store(
        bucket,
        prefix,
        client(settings.s3_timeout, 3),
        retry_seconds=settings.store_retry_seconds if retry_seconds is None else retry_seconds,
        probe=client(min(settings.s3_timeout, 2.0), 1),
    )


def wait_for_store(store: Store, settings: Settings, stop: Callable[[], bool] = bool) -> None:
    """Block until the store answers (a worker starting): a missing bucket is created when
    `s3_create_bucket` is set, else waited for, saying so; so is an unreachable store."""
    delay = 1.0
    while (problem := store.check()) is not None and not stop():
        missing = NO_BUCKET in problem
        if missing and settings.s3_create_bucket and isinstance(store, S3Store):
            log.warning("%s; creating it (CASCADE_S3_CREATE_BUCKET)", problem)
            try:
                store.create()
                continue
            except Exception as error:  # e.g. denied: say so and keep waiting
                log.warning("could not create the bucket: %s", error)
        hint = "; create it or set CASCADE_S3_CREATE_BUCKET" if missing else ""
        log.warning("result store: %s%s; taking no jobs, retrying in %.0f s", problem, hint, delay)
        time.sleep(delay)
        delay = min(delay * 2, settings.redis_backoff_max)
