"""schemathesis over every documented operation, against the app on a real (embedded) Redis
with a live worker registered: valid and invalid requests drawn from the OpenAPI schema with a
fixed seed and a budget that fits `make test`. No answer is a 5xx, every answer matches the
status codes, content types and body schemas the API documents, every error says what was
wrong, every answer carries nosniff, every 503 a Retry-After. Whatever it once found is a
plain regression test in test_hostile_inputs.py."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from rq import Worker
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from api.main import create_app
from cascade.stages import STAGES
from jobs.connection import EmbeddedRedis
from jobs.queues import stage_queue
from jobs.settings import Settings

SEED = 20240601
EXAMPLES = 40  # per operation: the whole schema in 20-40 s on two loaded cores

_redis_dir = Path(tempfile.mkdtemp(prefix="cascade-fuzz-"))
redis = EmbeddedRedis(_redis_dir / "fuzz.rdb")
app = create_app(
    Settings(
        redis_url=redis.url,
        store=str(_redis_dir / "store"),
        max_upload_bytes=200_000,
        max_steps=50,
        heartbeat_ttl=3600,  # the registered worker below stays alive for the whole run
    )
)
schema = schemathesis.openapi.from_asgi("/openapi.json", app)
schema.config.seed = SEED
schema.config.generation.update(modes=[GenerationMode.POSITIVE, GenerationMode.NEGATIVE])


@pytest.fixture(scope="module", autouse=True)
def _live_worker():
    """A worker on every stage queue, so that /readyz answers 200 (its 503 is no fault)."""
    connection = redis.client()
    worker = Worker([stage_queue(connection, stage) for stage in STAGES], connection=connection)
    worker.register_birth()
    worker.heartbeat()
    yield
    worker.register_death()
    redis.stop()


def errors_say_what_was_wrong(ctx, response, case) -> None:
    if response.status_code >= 400 and case.path != "/metrics":
        body = response.json()
        assert isinstance(body.get("error"), str) and body["error"], response.text


def every_answer_has_its_headers(ctx, response, case) -> None:
    assert response.headers.get("x-content-type-options") == ["nosniff"], response.headers
    if response.status_code == 503:
        assert response.headers.get("retry-after"), response.headers


@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
def test_the_schema_holds_for_every_input(case):
    case.call_and_validate(
        checks=[
            not_a_server_error,
            response_schema_conformance,
            status_code_conformance,
            content_type_conformance,
        ],
        additional_checks=[errors_say_what_was_wrong, every_answer_has_its_headers],
    )
