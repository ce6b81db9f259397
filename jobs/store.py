"""The result store: final PNG, per-stage PNG previews and a JSON record per job.

A local folder by default; an S3-compatible bucket (`s3://bucket/prefix`) when API and workers
run on different machines. Torch-free: the API reads PNGs from here too. boto3 is imported only
when an S3 store is opened, so the API image needs it only for S3 deployments.
"""

from __future__ import annotations

import logging
import os
import tempfile
from pathlib import Path
from typing import Protocol

from jobs.settings import Settings

log = logging.getLogger(__name__)

RESULT = "result.png"
RECORD = "job.json"


def object_name(job_id: str, name: str) -> str:
    """A job's file in the store: `{job_id}/{name}` (result.png, base64.png, job.json)."""
    if "/" in job_id or job_id in ("", ".", ".."):
        raise ValueError(f"not a job id: {job_id!r}")
    return f"{job_id}/{name}"


def stage_preview(stage: str) -> str:
    return f"{stage}.png"


class Store(Protocol):
    """Where results live; keys come from `object_name`."""

    def put(self, key: str, data: bytes, content_type: str) -> str: ...

    def get(self, key: str) -> bytes | None: ...


class LocalStore:
    """A folder; files appear atomically (written aside, then renamed) so readers never see
    half a PNG."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def put(self, key: str, data: bytes, content_type: str) -> str:
        path = self.root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        with os.fdopen(handle, "wb") as file:
            file.write(data)
        os.replace(temporary, path)
        return str(path)

    def get(self, key: str) -> bytes | None:
        path = self.root / key
        return path.read_bytes() if path.is_file() else None


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
