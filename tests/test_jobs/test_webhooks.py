"""Webhook destinations: internal addresses refused (literals and names, IPv4 and IPv6), the
allow-list, and refusal at submission (422), IPv4 carried in IPv6 and odd spellings included
(the full table is in test_destinations.py)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator

import pytest
from PIL import Image

from api.main import create_app
from jobs.connection import EmbeddedRedis
from jobs.settings import Settings
from jobs.webhooks import WebhookRefused, check_destination

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

INTERNAL = [
    "http://127.0.0.1:6379/",
    "http://localhost/hook",
    "http://169.254.169.254/latest/meta-data/",
    "http://10.1.2.3/",
    "http://192.168.0.10:8080/",
    "http://172.16.5.4/",
    "http://100.64.0.1/",
    "http://0.0.0.0/",
    "http://224.0.0.1/",
    "http://[::1]/",
    "http://[fe80::1]/",
    "http://[fd00::1]/",
    "http://[::ffff:127.0.0.1]/",
    "https://2130706433/",  # 127.0.0.1 as one decimal number
]


@pytest.mark.parametrize("url", INTERNAL)
def test_internal_destinations_are_refused(url: str):
    with pytest.raises(WebhookRefused, match="internal address"):
        check_destination(url, "", must_resolve=True)


def test_public_addresses_and_the_allow_list():
    assert check_destination("https://93.184.215.14/hook", "", must_resolve=True)
    assert check_destination("http://127.0.0.1:9000/", "127.0.0.1", must_resolve=True)
    assert check_destination("http://10.1.2.3/", "10.0.0.0/8", must_resolve=True)
    assert check_destination("http://localhost/", "localhost", must_resolve=True)
    with pytest.raises(WebhookRefused):
        check_destination("http://10.1.2.3/", "192.168.0.0/16", must_resolve=True)
    # A name that does not resolve: accepted at submission, refused at send time.
    assert check_destination("http://no-such-host.invalid/", "", must_resolve=False) == []
    with pytest.raises(WebhookRefused, match="does not resolve"):
        check_destination("http://no-such-host.invalid/", "", must_resolve=True)


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    redis = EmbeddedRedis(tmp_path_factory.mktemp("redis") / "hooks.rdb")
    settings = Settings(redis_url=redis.url, store=str(tmp_path_factory.mktemp("store")))
    with TestClient(create_app(settings)) as client:
        yield client
    redis.stop()


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254/",
        "http://127.0.0.1:6379/",
        "http://[64:ff9b::a00:1]/",  # NAT64 of 10.0.0.1
        "http://[2002:a00:1::1]/",  # 6to4 of 10.0.0.1
        "http://0x7f000001/",  # 127.0.0.1 in hex
        "http://0177.0.0.1/",  # 127.0.0.1 with an octal part
    ],
)
def test_internal_webhook_is_refused_at_submission(client: TestClient, url: str):
    response = client.post("/v1/generations", json={"class_id": 1, "webhook_url": url})
    assert response.status_code == 422, response.text
    assert "internal address" in response.json()["error"]
    upload = client.post(
        "/v1/upscales",
        data={"scale": "4", "webhook_url": url},
        files={"file": ("a.png", png())},
    )
    assert upload.status_code == 422, upload.text
    assert "internal address" in upload.json()["error"]


def png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), "red").save(buffer, format="PNG")
    return buffer.getvalue()
