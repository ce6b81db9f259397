"""The page's content policy and the headers every answer carries, failed authentications
rate limited per address, webhook URLs shown without their secrets, and a Retry-After on
every 503, against the API on a real (embedded) Redis."""

from __future__ import annotations

import hashlib
import re
import warnings
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest

from api.main import create_app
from jobs.connection import EmbeddedRedis
from jobs.lifecycle import Jobs
from jobs.settings import Settings

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

STATIC = Path(__file__).resolve().parents[2] / "api" / "static"
KEY = "the-one-right-key"


@pytest.fixture(scope="module")
def settings(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(redis_url=redis_server.url, store=str(tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    app = create_app(settings)

    def boom() -> None:
        raise RuntimeError("an unexpected failure")

    app.add_api_route("/boom", boom)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def directives(policy: str) -> dict[str, list[str]]:
    """A Content-Security-Policy as {directive: sources}."""
    parsed = {}
    for part in policy.split(";"):
        name, *sources = part.split()
        parsed[name] = sources
    return parsed


@pytest.mark.parametrize("path", ["/", "/static/app.js", "/static/style.css"])
def test_the_page_forbids_foreign_and_inline_script_and_framing(client: TestClient, path: str):
    response = client.get(path)
    assert response.status_code == 200
    policy = directives(response.headers["content-security-policy"])
    assert policy["default-src"] == ["'self'"]
    assert policy["script-src"] == ["'self'"]  # no 'unsafe-inline', no 'unsafe-eval'
    assert policy["frame-ancestors"] == ["'none'"] and policy["object-src"] == ["'none'"]
    assert policy["base-uri"] == ["'none'"]
    # Stage images are blob: URLs (URL.createObjectURL in the page's script), live previews
    # data: URLs from the progress events; nothing else, and data: for images only.
    assert policy["img-src"] == ["'self'", "blob:", "data:"]
    assert [name for name, sources in policy.items() if "data:" in sources] == ["img-src"]
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"


def test_the_page_needs_nothing_its_policy_forbids():
    class Inline(HTMLParser):
        def __init__(self) -> None:
            super().__init__()
            self.found: list[str] = []

        def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
            names = dict(attrs)
            if tag == "script" and not (names.get("src") or "").startswith("/static/"):
                self.found.append(f"<script> without a /static/ src: {attrs}")
            if tag == "style" or "style" in names:
                self.found.append(f"inline style on <{tag}>")
            for name, value in attrs:
                if name.startswith("on") or (value or "").strip().startswith("javascript:"):
                    self.found.append(f"inline handler {name} on <{tag}>")
            if tag in ("link", "img") and re.match(r"(https?:)?//", names.get("href") or ""):
                self.found.append(f"foreign {tag}: {attrs}")

        def handle_data(self, data: str) -> None:
            if self.lasttag == "script" and data.strip():
                self.found.append("inline script")

    parser = Inline()
    parser.feed((STATIC / "index.html").read_text())
    assert parser.found == []
    for script in STATIC.glob("*.js"):
        text = script.read_text()
        assert not re.search(r"\beval\(|new Function\(|https?://", text), script.name
        assert "on" + "click=" not in text and "style=" not in text, script.name
    uses_blobs = any("createObjectURL" in path.read_text() for path in STATIC.glob("*.js"))
    assert uses_blobs  # why img-src admits blob:


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    [
        ("GET", "/healthz", {}, 200),
        ("GET", "/v1/jobs/" + "0" * 32, {}, 404),
        ("GET", "/nowhere", {}, 404),
        ("POST", "/v1/generations", {"json": {"class_id": -1}}, 422),
        (
            "POST",
            "/v1/generations",
            {"content": b"x" * 100_000, "headers": {"content-type": "application/json"}},
            413,
        ),
        ("GET", "/boom", {}, 500),
        ("GET", "/openapi.json", {}, 200),
    ],
)
def test_every_answer_is_nosniff_and_sends_no_referrer(
    client: TestClient, method: str, path: str, kwargs: dict, status: int
):
    response = client.request(method, path, **kwargs)
    assert response.status_code == status, response.text
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["referrer-policy"] == "no-referrer"
    # The API docs load FastAPI's own inline script: the page's policy is the page's only.
    assert "content-security-policy" not in response.headers


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_failed_authentications_are_rate_limited_per_address(
    redis_server: EmbeddedRedis, tmp_path: Path
):
    redis_server.client().flushdb()
    config = Settings(
        redis_url=redis_server.url,
        store=str(tmp_path),
        api_key_hashes=hashlib.sha256(KEY.encode()).hexdigest(),
        auth_failure_limit="3/minute",
    )
    app = create_app(config)
    with (
        TestClient(app, client=("203.0.113.7", 4000)) as guesser,
        TestClient(app, client=("198.51.100.2", 4000)) as neighbour,
    ):
        answers = [
            guesser.get("/v1/limits", headers=bearer(f"guess-{number}")) for number in range(2)
        ]
        answers.append(guesser.get("/v1/jobs/" + "0" * 32))  # no key at all fails too
        assert [answer.status_code for answer in answers] == [401, 401, 401]
        refused = guesser.get("/v1/limits", headers=bearer("guess-3"))
        assert refused.status_code == 429, refused.text
        assert 0 < int(refused.headers["retry-after"]) <= 60
        assert "failed authentications" in refused.json()["error"]
        # Past the limit even the right key is refused: else a guess that is not a 429 is
        # the key, at full speed.
        assert guesser.get("/v1/limits", headers=bearer(KEY)).status_code == 429
        # Another address is not held back by this one's guesses.
        assert neighbour.get("/v1/limits", headers=bearer(KEY)).status_code == 200
        assert neighbour.get("/v1/limits", headers=bearer("wrong")).status_code == 401


def test_the_job_view_shows_webhook_urls_without_their_secrets(
    client: TestClient, redis_server: EmbeddedRedis, settings: Settings
):
    given = "https://user:pass@hooks.example.com:8443/cascade/in?token=s3cret#part"
    response = client.post(
        "/v1/generations", json={"class_id": 1, "size": 64, "webhook_url": given}
    )
    assert response.status_code == 202, response.text
    job_id = response.json()["id"]
    view = client.get(f"/v1/jobs/{job_id}").json()
    assert view["request"]["webhook_url"] == "https://hooks.example.com:8443/cascade/in"
    canceled = client.delete(f"/v1/jobs/{job_id}").json()  # the terminal event's data
    assert canceled["request"]["webhook_url"] == "https://hooks.example.com:8443/cascade/in"
    events = client.get(f"/v1/jobs/{job_id}/events").text
    assert "s3cret" not in events and "pass@" not in events
    # The sender still posts to the URL as given.
    assert Jobs(redis_server.client(), settings.result_ttl).get(job_id).webhook_url == given


class BrokenStore:
    """A store whose reads fail, as S3 does while unreachable."""

    def get(self, key: str) -> bytes | None:
        raise ConnectionError("could not connect to the endpoint URL")


def test_every_503_says_when_to_retry(
    client: TestClient, redis_server: EmbeddedRedis, settings: Settings
):
    ready = client.get("/readyz")  # no worker is serving in this module
    assert ready.status_code == 503 and int(ready.headers["retry-after"]) > 0
    response = client.post("/v1/generations", json={"class_id": 1, "size": 64})
    job_id = response.json()["id"]
    jobs = Jobs(redis_server.client(), settings.result_ttl)
    jobs.stage_started(job_id, "base64", {"model": "tiny"}, "worker-1")
    jobs.stage_ended(job_id, "base64", "succeeded")
    jobs.end(job_id, "succeeded")
    app = client.app
    working, app.state.store = getattr(app.state, "store", None), BrokenStore()
    try:
        for path in (f"/v1/jobs/{job_id}/result", f"/v1/jobs/{job_id}/stages/base64"):
            answer = client.get(path)
            assert answer.status_code == 503, answer.text
            assert answer.headers["retry-after"] == "5"
            assert answer.json()["error"] == "the result store is unavailable; try again shortly"
            assert "endpoint" not in answer.text  # the log has the exception, not the client
    finally:
        app.state.store = working
