"""The result store: a local folder, and S3 calls checked with botocore's Stubber (which
validates every request against the S3 API model, without a network)."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import Stubber

from jobs.settings import Settings
from jobs.store import (
    MB,
    RESULT,
    LocalStore,
    S3Store,
    free_bytes,
    megabytes,
    object_name,
    open_store,
    parse_s3_url,
    space_shortfall,
    stage_preview,
)


def test_object_names():
    assert object_name("abc", RESULT) == "abc/result.png"
    assert object_name("abc", stage_preview("sr256")) == "abc/sr256.png"
    for bad in ("", "..", "a/b"):
        with pytest.raises(ValueError):
            object_name(bad, RESULT)


def test_local_store_round_trip(tmp_path: Path):
    store = LocalStore(tmp_path / "results")
    location = store.put("job/result.png", b"png bytes", "image/png")
    assert Path(location) == tmp_path / "results" / "job" / "result.png"
    assert store.get("job/result.png") == b"png bytes"
    assert store.get("job/missing.png") is None
    store.put("job/result.png", b"new", "image/png")  # replaced whole, no stray temporaries
    assert [path.name for path in (tmp_path / "results" / "job").iterdir()] == ["result.png"]


def test_settings_choose_the_store(tmp_path: Path):
    assert isinstance(open_store(Settings(store=str(tmp_path))), LocalStore)
    store = open_store(
        Settings(
            store="s3://bucket/some/prefix",
            s3_endpoint_url="http://minio:9000",
            s3_region="us-east-1",
            s3_access_key_id="key",
            s3_secret_access_key="secret",
        )
    )
    assert isinstance(store, S3Store)
    assert (store.bucket, store.prefix) == ("bucket", "some/prefix")
    assert store.client.meta.endpoint_url == "http://minio:9000"


def test_parse_s3_url():
    assert parse_s3_url("s3://bucket") == ("bucket", "")
    assert parse_s3_url("s3://bucket/a/b/") == ("bucket", "a/b/")
    with pytest.raises(ValueError, match="s3://bucket"):
        parse_s3_url("s3:///prefix")


@pytest.fixture
def s3() -> tuple[S3Store, Stubber]:
    client = boto3.client(
        "s3", region_name="us-east-1", aws_access_key_id="k", aws_secret_access_key="s"
    )
    return S3Store("results", "cascade/", client), Stubber(client)


def test_s3_put_names_keys_under_the_prefix(s3: tuple[S3Store, Stubber]):
    store, stub = s3
    expected = {
        "Bucket": "results",
        "Key": "cascade/job/result.png",
        "Body": b"png",
        "ContentType": "image/png",
    }
    stub.add_response("put_object", {}, expected)
    with stub:
        assert store.put("job/result.png", b"png", "image/png") == (
            "s3://results/cascade/job/result.png"
        )
    stub.assert_no_pending_responses()


def test_s3_get_and_missing_keys(s3: tuple[S3Store, Stubber]):
    store, stub = s3
    body = StreamingBody(io.BytesIO(b"png"), 3)
    key = {"Bucket": "results", "Key": "cascade/job/sr256.png"}
    stub.add_response("get_object", {"Body": body}, key)
    stub.add_client_error("get_object", "NoSuchKey", http_status_code=404, expected_params=key)
    stub.add_client_error("get_object", "AccessDenied", http_status_code=403, expected_params=key)
    with stub:
        assert store.get("job/sr256.png") == b"png"
        assert store.get("job/sr256.png") is None
        with pytest.raises(Exception, match="AccessDenied"):
            store.get("job/sr256.png")


def test_space_shortfall_compares_the_store_disk_with_the_floor(tmp_path: Path):
    free = shutil.disk_usage(tmp_path).free
    roomy = Settings(store=str(tmp_path / "not-made-yet"), min_free_mb=1)
    assert free_bytes(roomy.store) == pytest.approx(free, abs=50 * MB)  # its parent's disk
    assert space_shortfall(roomy) is None
    short = Settings(store=str(tmp_path), min_free_mb=2 * free / MB)
    reason = space_shortfall(short)
    assert reason is not None and reason.startswith("the result disk has ")
    assert f"under the {2 * free / MB:g} MB kept free (CASCADE_MIN_FREE_MB)" in reason
    assert space_shortfall(Settings(store=str(tmp_path), min_free_mb=0)) is None  # off
    assert space_shortfall(Settings(store="s3://bucket", min_free_mb=10**9)) is None  # no disk


def test_megabytes_read_as_people_read_them():
    assert megabytes(12_345_678) == "12.3"
    assert megabytes(100_000) == "0.1"
    assert megabytes(24_576) == "0.025"
    assert megabytes(0) == "0.000"
