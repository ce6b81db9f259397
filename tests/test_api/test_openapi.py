"""The OpenAPI document: valid, with readable operation ids, the Bearer scheme, every error
described, enums where values are fixed, the event stream's events; its examples, the README's
curl lines and the page's fields fit its schemas, and the examples are requests the service
(with the demo base's classes) accepts."""

from __future__ import annotations

import io
import json
import re
import shlex
import struct
import warnings
from collections.abc import Iterator
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from jsonschema import Draft202012Validator
from openapi_spec_validator import validate
from PIL import Image

from api.main import create_app
from cascade.stages import COLOR_FIXES, LOW_BANDS, SAMPLER_NAMES
from jobs.catalog import announce
from jobs.connection import EmbeddedRedis
from jobs.events import EVENT_TYPES
from jobs.lifecycle import Jobs
from jobs.settings import Settings

with warnings.catch_warnings():  # starlette nudges towards httpx2, which is not installed here
    warnings.simplefilter("ignore")
    from fastapi.testclient import TestClient

REPO = Path(__file__).resolve().parents[2]
DEMO_BASE = REPO / "weights" / "demo" / "base64.safetensors"


@pytest.fixture(scope="module")
def settings(redis_server: EmbeddedRedis, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings(redis_url=redis_server.url, store=str(tmp_path_factory.mktemp("store")))


@pytest.fixture(scope="module")
def client(settings: Settings, redis_server: EmbeddedRedis) -> Iterator[TestClient]:
    # What a worker that loaded the demo base announces: the classes it was trained on.
    announce(redis_server.client(), "base64", {"classes": demo_classes()})
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture(scope="module")
def document(client: TestClient) -> dict[str, Any]:
    return client.get("/openapi.json").json()


def demo_classes() -> list[int]:
    """The class ids in the demo base's spec, read from its safetensors header."""
    with open(DEMO_BASE, "rb") as weights:
        (length,) = struct.unpack("<Q", weights.read(8))
        metadata = json.loads(weights.read(length))["__metadata__"]
    return json.loads(metadata["cascade.spec"])["classes"]


def validator(document: dict[str, Any], schema: dict[str, Any]) -> Draft202012Validator:
    """A JSON Schema validator for `schema`, its `#/components/...` references resolved."""
    return Draft202012Validator({**schema, "components": document["components"]})


def schema_of(document: dict[str, Any], name: str) -> dict[str, Any]:
    return document["components"]["schemas"][name]


def operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, items in document["paths"].items():
        for method, operation in items.items():
            yield path, method, operation


def png(width: int, height: int) -> bytes:
    pixels = np.random.default_rng(0).integers(0, 256, (height, width, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def test_the_document_is_valid_openapi(document: dict[str, Any]):
    validate(document)  # raises, naming the fault, where it is not
    assert document["openapi"].startswith("3.1")


def test_operation_ids_are_the_route_names(document: dict[str, Any]):
    ids = {
        f"{method.upper()} {path}": op["operationId"] for path, method, op in operations(document)
    }
    assert ids == {
        "POST /v1/generations": "create_generation",
        "POST /v1/upscales": "create_upscale",
        "GET /v1/jobs": "list_jobs",
        "GET /v1/jobs/{job_id}": "get_job",
        "DELETE /v1/jobs/{job_id}": "cancel_job",
        "GET /v1/jobs/{job_id}/result": "get_result",
        "GET /v1/jobs/{job_id}/stages/{stage}": "get_stage_image",
        "GET /v1/jobs/{job_id}/events": "get_job_events",
        "GET /v1/classes": "list_classes",
        "GET /v1/limits": "get_limits",
        "GET /healthz": "healthz",
        "GET /readyz": "readyz",
        "GET /metrics": "metrics",
    }


def test_every_v1_route_takes_a_bearer_key(document: dict[str, Any]):
    scheme = document["components"]["securitySchemes"]["bearer"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer")
    for path, method, operation in operations(document):
        expected = [{"bearer": []}, {}] if path.startswith("/v1/") else None
        assert operation.get("security") == expected, (method, path)
        if path.startswith("/v1/"):
            assert {"401", "429", "503"} <= set(operation["responses"]), (method, path)


def test_errors_are_documented_with_the_error_body(document: dict[str, Any]):
    for path, method, operation in operations(document):
        for status, response in operation["responses"].items():
            if int(status) < 400:
                continue
            schema = response["content"]["application/json"]["schema"]
            assert schema == {"$ref": "#/components/schemas/ErrorBody"}, (method, path, status)
            phrase = HTTPStatus(int(status)).phrase  # FastAPI's default description
            assert response["description"] != phrase, (method, path, status)
            has_retry_after = "Retry-After" in response.get("headers", {})
            assert has_retry_after == (status in ("429", "503", "507")), (method, path, status)
    for path in ("/v1/generations", "/v1/upscales"):
        statuses = set(document["paths"][path]["post"]["responses"])
        assert {"401", "413", "415", "422", "429", "503", "507"} <= statuses, path
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas and "ValidationError" not in schemas


def test_fixed_values_are_enums(client: TestClient, document: dict[str, Any]):
    limits = client.get("/v1/limits").json()
    upscale = schema_of(document, "UpscaleForm")["properties"]
    generation = schema_of(document, "GenerationRequest")["properties"]

    def enum(property_schema: dict[str, Any]) -> list[object]:
        (choice,) = [
            item for item in property_schema.get("anyOf", [property_schema]) if "enum" in item
        ]
        return choice["enum"]

    assert enum(upscale["scale"]) == limits["scales"] == [4, 16]
    assert enum(generation["size"]) == limits["sizes"] == [64, 256, 1024]
    assert enum(generation["sampler"]) == enum(upscale["sampler"]) == list(SAMPLER_NAMES)
    assert enum(upscale["color_fix"]) == list(COLOR_FIXES)
    assert enum(upscale["low_band"]) == list(LOW_BANDS)
    assert schema_of(document, "JobAccepted")["properties"]["status"] == {
        "$ref": "#/components/schemas/JobStatus"
    }


def test_the_event_stream_describes_every_event_type(document: dict[str, Any]):
    response = document["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]
    schema = response["content"]["text/event-stream"]["schema"]
    assert set(schema["discriminator"]["mapping"]) == set(EVENT_TYPES)
    assert "application/json" not in response["content"]


def test_events_a_job_sends_fit_their_schema(
    client: TestClient, document: dict[str, Any], redis_server: EmbeddedRedis, settings: Settings
):
    response = client.post("/v1/generations", json={"class_name": "tabby", "size": 256})
    job_id = response.json()["id"]
    jobs = Jobs(redis_server.client(), settings.result_ttl)
    jobs.stage_started(job_id, "base64", {"model": "tiny"}, "worker-1")
    jobs.progress([job_id], "base64", 1, 2)
    jobs.stage_ended(job_id, "base64", "succeeded")
    jobs.stage_retrying(job_id, "sr256", "its worker stopped responding")
    jobs.end(job_id, "canceled")
    stream = client.get(f"/v1/jobs/{job_id}/events").text
    events = []
    for block in stream.replace("\r\n", "\n").split("\n\n"):
        fields = dict(line.split(": ", 1) for line in block.splitlines() if ": " in line)
        if "event" in fields:
            events.append(
                {"id": fields["id"], "event": fields["event"], "data": json.loads(fields["data"])}
            )
    types = ["queued", "stage_started", "progress", "stage_finished", "stage_retrying", "canceled"]
    assert [event["event"] for event in events] == types
    schema = document["paths"]["/v1/jobs/{job_id}/events"]["get"]["responses"]["200"]
    check = validator(document, schema["content"]["text/event-stream"]["schema"])
    for event in events:
        check.validate(event)
    wrong = {**events[2], "data": {**events[2]["data"], "step": "two"}}
    assert not check.is_valid(wrong)  # the schema holds the data to its types


def examples_in(document: dict[str, Any]) -> Iterator[tuple[str, dict[str, Any], object]]:
    """Every example in the document, with the schema it must fit: media types' `example`
    and `examples`, and the `examples` of schema properties."""
    for path, method, operation in operations(document):
        media = list(operation.get("requestBody", {}).get("content", {}).items())
        for status, response in operation["responses"].items():
            media += [
                (f"{status} {kind}", item) for kind, item in response.get("content", {}).items()
            ]
        for kind, item in media:
            where = f"{method} {path} {kind}"
            if "example" in item:
                yield where, item["schema"], item["example"]
            for name, example in item.get("examples", {}).items():
                yield f"{where} {name}", item["schema"], example["value"]
    for name, schema in document["components"]["schemas"].items():
        for field, property_schema in schema.get("properties", {}).items():
            for example in property_schema.get("examples", []):
                yield f"{name}.{field}", property_schema, example


def test_every_example_fits_its_schema(document: dict[str, Any]):
    found = list(examples_in(document))
    assert len(found) >= 8, found
    for where, schema, example in found:
        errors = [error.message for error in validator(document, schema).iter_errors(example)]
        assert not errors, (where, errors)


def test_the_examples_are_requests_the_service_takes(client: TestClient, document: dict[str, Any]):
    from cascade.classes import class_names

    names = class_names()
    known = {names[index] for index in demo_classes()}
    post = document["paths"]["/v1/generations"]["post"]
    bodies = [
        example["value"]
        for example in post["requestBody"]["content"]["application/json"]["examples"].values()
    ]
    for body in bodies:
        assert body.get("class_name", names[body.get("class_id", 0)]) in known, body
        response = client.post("/v1/generations", json=body)
        assert response.status_code == (200 if body.get("dry_run") else 202), response.text
    refused = client.post("/v1/generations", json={"class_name": "golden retriever"})
    assert refused.status_code == 422 and "tabby" in refused.text  # the demo base's classes rule
    bad = client.post("/v1/generations", json={"class_name": "tabby", "size": 100})
    documented = post["responses"]["422"]["content"]["application/json"]["example"]
    assert bad.status_code == 422 and bad.json() == documented
    upscale = document["paths"]["/v1/upscales"]["post"]["requestBody"]["content"]
    for example in upscale["multipart/form-data"]["examples"].values():
        fields = {name: str(value) for name, value in example["value"].items() if name != "file"}
        response = client.post(
            "/v1/upscales", data=fields, files={"file": ("photo.png", png(64, 64))}
        )
        assert response.status_code == 202, response.text


def curl_commands(text: str) -> list[list[str]]:
    """The README's curl command lines, continuation lines joined, as shell words."""
    joined = re.sub(r"\\\n\s*", " ", text)
    return [
        shlex.split(line.strip())[:]
        for line in joined.splitlines()
        if line.strip().startswith("curl ")
    ]


def form_value(value: str, schema: dict[str, Any]) -> object:
    """A form field's text as the type its schema gives it (the server reads it that way)."""
    types = {item.get("type") for item in schema.get("anyOf", [schema])}
    if "integer" in types and re.fullmatch(r"-?\d+", value):
        return int(value)
    if "number" in types and re.fullmatch(r"-?\d+(\.\d+)?", value):
        return float(value)
    if "boolean" in types and value in ("true", "false"):
        return value == "true"
    return value


def test_the_readmes_curl_lines_fit_the_schema(document: dict[str, Any]):
    commands = curl_commands((REPO / "README.md").read_text())
    generation, upscale = (
        schema_of(document, "GenerationRequest"),
        schema_of(document, "UpscaleForm"),
    )
    checked = {"generation": 0, "upscale": 0}
    for words in commands:
        url = next((word for word in words if "/v1/" in word), "")
        if url.endswith("/v1/generations") and "-d" in words:
            body = json.loads(words[words.index("-d") + 1])
            errors = [error.message for error in validator(document, generation).iter_errors(body)]
            assert not errors, (body, errors)
            checked["generation"] += 1
        elif url.endswith("/v1/upscales"):
            fields = dict(
                words[index + 1].split("=", 1) for index, word in enumerate(words) if word == "-F"
            )
            assert fields.pop("file").startswith("@")
            body = {
                name: form_value(value, upscale["properties"].get(name, {}))
                for name, value in fields.items()
            }
            body["file"] = "photo.png"
            errors = [error.message for error in validator(document, upscale).iter_errors(body)]
            assert not errors, (body, errors)
            checked["upscale"] += 1
    assert checked["generation"] >= 2 and checked["upscale"] >= 2, checked


def test_the_pages_fields_are_in_the_schema(document: dict[str, Any]):
    forms = (REPO / "api" / "static" / "forms.js").read_text()
    sent = {
        "GenerationRequest": set(re.findall(r"\brequest\.(\w+) =", forms)),
        "UpscaleForm": set(re.findall(r"\bfields\.(\w+) =", forms)),
    }
    assert {"class_id", "class_name", "seed", "steps"} <= sent["GenerationRequest"]
    assert {"scale", "target_size", "fidelity"} <= sent["UpscaleForm"]
    for name, fields in sent.items():
        properties = set(schema_of(document, name)["properties"])
        assert fields <= properties, (name, fields - properties)
