"""One trace per job: the API's submission span is the root, each stage a worker runs is its
child (OpenTelemetry SDK, in-memory exporter; the stages run in process on tiny presets)."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from api.main import create_app
from jobs import tracing
from jobs.connection import EmbeddedRedis
from jobs.settings import Settings
from workers import runtime as runtime_module
from workers.runtime import Runtime
from workers.stage import run_stage

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

TINY = {f"weights_{stage}": f"preset:{stage}-tiny" for stage in ("base64", "sr256", "sr1024")}


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.install(provider)
    yield spans
    tracing.install(None)


def test_a_job_is_one_trace_from_the_post_through_its_stages(
    redis_server: EmbeddedRedis, tmp_path: Path, exporter: InMemorySpanExporter
):
    redis_server.client().flushdb()
    settings = Settings(redis_url=redis_server.url, store=str(tmp_path), torch_threads=1, **TINY)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    runtime = Runtime(settings, redis_server.client())
    runtime_module.install(runtime)
    try:
        with TestClient(create_app(settings)) as client:
            made = client.post("/v1/generations", json={"class_id": 1, "size": 256, "steps": 2})
            assert made.status_code == 202, made.text
        job_id = made.json()["id"]
        assert runtime.jobs.get(job_id).fields["traceparent"].startswith("00-")
        run_stage(job_id, "base64")
        run_stage(job_id, "sr256")
        assert runtime.jobs.get(job_id).status == "succeeded"
    finally:
        runtime_module.install(None)  # type: ignore[arg-type]
        torch.set_num_threads(threads)
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"cascade.job.submit", "cascade.stage base64", "cascade.stage sr256"}
    root = spans["cascade.job.submit"]
    assert root.parent is None and root.attributes["cascade.job.id"] == job_id
    for stage in ("base64", "sr256"):
        child = spans[f"cascade.stage {stage}"]
        assert child.context.trace_id == root.context.trace_id  # one trace
        assert child.parent.span_id == root.context.span_id
        assert child.attributes["cascade.stage"] == stage
        assert child.attributes["cascade.job.id"] == job_id
    assert spans["cascade.stage base64"].end_time <= spans["cascade.stage sr256"].start_time


def test_tracing_is_off_unless_configured(redis_server: EmbeddedRedis, tmp_path: Path):
    tracing.install(None)
    with tracing.span("cascade.job.submit") as traceparent:
        assert traceparent == ""
