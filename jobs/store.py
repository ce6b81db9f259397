"""The result store: final PNG, per-stage PNG previews and a JSON record per job.

A local folder by default; an S3-compatible bucket (`s3://bucket/prefix`) when API and workers
run on different machines. Torch-free: the API reads PNGs from here too. boto3 is imported only
when an S3 store is opened, so the API image needs it only for S3 deployments.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from jobs.settings import Settings

log = logging.getLogger(__name__)

RESULT = "result.png"
RECORD = "job.json"
JOB_ID = re.compile(r"[0-9a-f]{32}")  # uuid4 hex (`api.submit.new_job_id`): all retention touches
MB = 10**6
FULL = (errno.ENOSPC, errno.EDQUOT)  # no space left on the device; the user's quota exhausted


def object_name(job_id: str, name: str) -> str:
    """A job's file in the store: `{job_id}/{name}` (result.png, base64.png, job.json)."""
    if "/" in job_id or job_id in ("", ".", ".."):
        raise ValueError(f"not a job id: {job_id!r}")
    return f"{job_id}/{name}"


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


class Store(Protocol):
    """Where results live; keys come from `object_name`."""

    def put(self, key: str, data: bytes, content_type: str) -> str: ...

    def get(self, key: str) -> bytes | None: ...

    def delete_older_than(self, cutoff: float) -> list[str]: ...


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


class S3Store:
    """A bucket on S3 or any S3-compatible service (MinIO, R2, ...)."""

    def __init__(self, bucket: str, prefix: str = "", client: object | None = None):
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.client = client

    def key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def put(self, key: str, data: bytes, content_type: str) -> str:
        self.client.put_object(  # type: ignore[attr-defined]
            Bucket=self.bucket, Key=self.key(key), Body=data, ContentType=content_type
        )
        return f"s3://{self.bucket}/{self.key(key)}"

    def get(self, key: str) -> bytes | None:
        from botocore.exceptions import ClientError

        try:
            response = self.client.get_object(Bucket=self.bucket, Key=self.key(key))  # type: ignore[attr-defined]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        return response["Body"].read()

    def delete_older_than(self, cutoff: float) -> list[str]:
        """Delete each job's objects when its newest is older than `cutoff` (a Unix time)."""
        start = f"{self.prefix}/" if self.prefix else ""
        jobs: dict[str, list[tuple[str, datetime]]] = {}
        paginator = self.client.get_paginator("list_objects_v2")  # type: ignore[attr-defined]
        for page in paginator.paginate(Bucket=self.bucket, Prefix=start):
            for item in page.get("Contents", []):
                job_id = item["Key"][len(start) :].partition("/")[0]
                if JOB_ID.fullmatch(job_id):
                    jobs.setdefault(job_id, []).append((item["Key"], item["LastModified"]))
        limit = datetime.fromtimestamp(cutoff, UTC)
        expired = [job for job, items in jobs.items() if max(when for _, when in items) < limit]
        keys = [{"Key": key} for job in expired for key, _ in jobs[job]]
        for index in range(0, len(keys), 1000):  # S3 deletes at most 1000 keys per call
            self.client.delete_objects(  # type: ignore[attr-defined]
                Bucket=self.bucket, Delete={"Objects": keys[index : index + 1000], "Quiet": True}
            )
        return expired


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


def open_store(settings: Settings) -> Store:
    """The store `settings.store` names: a folder path, or s3://bucket/prefix."""
    if not settings.store.startswith("s3://"):
        return LocalStore(settings.store)
    import boto3  # only S3 deployments need it

    bucket, prefix = parse_s3_url(settings.store)
    secret = settings.s3_secret_access_key
    client = boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.s3_region,
        aws_access_key_id=settings.s3_access_key_id,
        aws_secret_access_key=secret.get_secret_value() if secret else None,
    )
    return S3Store(bucket, prefix, client)
