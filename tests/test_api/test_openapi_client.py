"""A client generated from the OpenAPI document by openapi-python-client builds: every route
is an importable module named by its operation id, and its models read and write the
document's examples."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from api.main import create_app

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
# The generator reads JSON, text and octet-stream bodies; the images are bytes to it.
CONFIG = "content_type_overrides:\n  image/png: application/octet-stream\n"
PROBE = """
import importlib, json, sys
spec = json.load(open(sys.argv[1]))
from cascade_api.models import GenerationRequest, JobAccepted, UpscaleForm
ids = sorted(op["operationId"] for item in spec["paths"].values() for op in item.values())
for operation_id in ids:
    module = next(
        importlib.import_module(f"cascade_api.api.{tag}.{operation_id}")
        for tag in ("jobs", "service")
        if importlib.util.find_spec(f"cascade_api.api.{tag}.{operation_id}")
    )
    assert callable(module.sync_detailed) and callable(module.asyncio), operation_id
post = spec["paths"]["/v1/generations"]["post"]
for example in post["requestBody"]["content"]["application/json"]["examples"].values():
    assert GenerationRequest.from_dict(example["value"]).to_dict() == example["value"]
accepted = post["responses"]["202"]["content"]["application/json"]["example"]
assert JobAccepted.from_dict(accepted).id == accepted["id"]
print(len(ids))
"""


def generator() -> str | None:
    """openapi-python-client: CASCADE_OPENAPI_GENERATOR, the project's venv, or PATH."""
    named = os.environ.get("CASCADE_OPENAPI_GENERATOR")
    if named:
        return named
    return shutil.which("openapi-python-client", path=f"{BIN}{os.pathsep}{os.environ['PATH']}")


def test_a_generated_client_builds(tmp_path: Path):
    command = generator()
    if command is None:
        pytest.skip("openapi-python-client is not installed (it is in the dev extra)")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        document = create_app().openapi()
    spec = tmp_path / "openapi.json"
    spec.write_text(json.dumps(document))
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    package = tmp_path / "cascade_api"
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}  # its ruff pass
    done = subprocess.run(
        [command, "generate", "--path", str(spec), "--config", str(config), "--meta", "none"]
        + ["--output-path", str(package)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "WARNING parsing" not in done.stdout, done.stdout  # no route left out
    probe = subprocess.run(
        [sys.executable, "-c", PROBE, str(spec)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(tmp_path)},
    )
    assert probe.returncode == 0, probe.stderr
    assert int(probe.stdout) == len(
        [op for item in document["paths"].values() for op in item.values()]
    )
