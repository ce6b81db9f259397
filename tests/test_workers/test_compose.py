"""The deployment files, checked by structure (Docker cannot run here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from jobs.settings import Settings

REPO = Path(__file__).resolve().parents[2]
STAGES = {"base64", "sr256", "sr1024"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def workers(compose: dict) -> dict[str, dict]:
    return {name: s for name, s in compose["services"].items() if name.startswith("worker-")}


def test_services_exist(compose: dict):
    services = compose["services"]
    assert {"redis", "api", "worker-base64", "worker-sr256", "worker-sr1024"} <= set(services)
    assert services["minio"]["profiles"] == ["s3"]  # the S3 store is optional


def test_redis_persists(compose: dict):
    redis = compose["services"]["redis"]
    command = redis["command"]
    assert command[command.index("--appendonly") + 1] == "yes"
    assert any(volume.endswith(":/data") for volume in redis["volumes"])


def test_each_worker_serves_one_stage(compose: dict):
    served = []
    for name, service in workers(compose).items():
        command = service["command"]
        assert command[:2] == ["worker", "--stages"]
        assert "," not in command[2] and name == f"worker-{command[2]}"
        served.append(command[2])
        assert service["build"]["dockerfile"] == "docker/worker.Dockerfile"
    assert sorted(served) == sorted(STAGES)


def test_workers_reserve_a_gpu_and_mount_weights_read_only(compose: dict):
    for service in workers(compose).values():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        weights = [
            v for v in service["volumes"] if isinstance(v, dict) and v["target"] == "/weights"
        ]
        assert weights and weights[0]["read_only"] is True
        # The weights folder is required: compose stops with a message when it is unset.
        assert re.fullmatch(r"\$\{CASCADE_WEIGHTS_DIR:\?.+\}", weights[0]["source"])
        for stage in STAGES:
            path = service["environment"][f"CASCADE_WEIGHTS_{stage.upper()}"]
            assert path.startswith("/weights/")


def test_api_runs_the_torch_free_image(compose: dict):
    api = compose["services"]["api"]
    assert api["build"]["dockerfile"] == "docker/api.Dockerfile"
    assert "deploy" not in api  # no GPU
    dockerfile = (REPO / "docker" / "api.Dockerfile").read_text()
    installs = [line for line in dockerfile.splitlines() if "pip install" in line]
    assert installs and not any("torch" in line for line in installs)
    assert "--no-deps" in dockerfile and "'api'" in dockerfile
    assert "api.main:create_app" in dockerfile


def test_every_cascade_variable_is_a_setting(compose: dict):
    fields = set(Settings.model_fields)
    seen = set()
    for name, service in compose["services"].items():
        for key in service.get("environment", {}) or {}:
            if key.startswith("CASCADE_"):
                setting = key.removeprefix("CASCADE_").lower()
                assert setting in fields, f"{name} sets {key}, which no Settings field reads"
                seen.add(setting)
    assert {"redis_url", "store", "weights_base64", "device"} <= seen


def test_empty_variables_count_as_unset(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("CASCADE_S3_ENDPOINT_URL", "")  # what `${VAR:-}` gives a container
    monkeypatch.setenv("CASCADE_STORE", "s3://bucket/prefix")
    settings = Settings()
    assert settings.s3_endpoint_url is None and settings.store == "s3://bucket/prefix"


def test_images_copy_only_their_layers():
    """The API image holds the torch-free layers; the worker image no HTTP API and neither
    image the benchmarks (the layers themselves are checked by `lint-imports`)."""

    def copied(name: str) -> set[str]:
        text = (REPO / "docker" / name).read_text()
        return set(re.findall(r"^COPY (\w+)/ ", text, flags=re.MULTILINE))

    assert copied("api.Dockerfile") == {"cascade", "jobs", "api"}
    assert copied("worker.Dockerfile") == {"cascade", "jobs", "workers"}
