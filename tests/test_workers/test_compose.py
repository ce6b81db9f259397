"""The deployment files, checked by structure (Docker cannot run here)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
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
    command = " ".join(redis["command"]).split()  # a shell line (the password is optional)
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
    for name, service in workers(compose).items():
        devices = service["deploy"]["resources"]["reservations"]["devices"]
        assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
        # Its own GPU, settable per stage: `count: 1` gives every stage GPU 0.
        stage = name.removeprefix("worker-").upper()
        assert devices[0]["device_ids"] == [f"${{{stage}_GPU:-0}}"] and "count" not in devices[0]
        weights = [
            v for v in service["volumes"] if isinstance(v, dict) and v["target"] == "/weights"
        ]
        assert weights and weights[0]["read_only"] is True
        # Not required (`:?` would stop every compose command, even for the API alone).
        assert weights[0]["source"] == "${CASCADE_WEIGHTS_DIR:-./weights}"
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


def test_every_setting_reaches_every_service_and_env_example(compose: dict):
    """Each Settings field can be passed to the API, the workers and the sender, and is listed
    in .env.example (both from jobs/settings.py, so neither can drift)."""
    variables = {f"CASCADE_{name.upper()}" for name in Settings.model_fields}
    for name in ("api", "webhooks", *workers(compose)):
        missing = variables - set(compose["services"][name]["environment"])
        assert not missing, f"{name} cannot be given {sorted(missing)}"
    example = (REPO / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?(CASCADE_[A-Z0-9_]+)=", example, flags=re.MULTILINE))
    assert listed == variables, (sorted(variables - listed), sorted(listed - variables))


def test_redis_bounds_memory_and_never_evicts(compose: dict):
    command = " ".join(compose["services"]["redis"]["command"])
    assert "--maxmemory-policy noeviction" in command and "--maxmemory " in command
    assert "--requirepass" in command


def test_remote_profile_publishes_redis_only_with_a_password(compose: dict):
    services = compose["services"]
    assert services["redis-remote"]["profiles"] == ["remote"]
    assert services["s3-remote"]["profiles"] == ["remote"]
    assert "REDIS_PASSWORD" in " ".join(services["redis-remote"]["entrypoint"])
    published = [
        s for s in services.values() if s.get("ports") and "remote" not in s.get("profiles", [])
    ]
    assert all("redis" not in str(s.get("image")) for s in published)  # not without the profile


def test_worker_health_check_reads_its_heartbeat(compose: dict):
    for service in workers(compose).values():
        assert service["healthcheck"]["test"] == ["CMD", "cascade", "worker", "--check"]
    dockerfile = (REPO / "docker" / "worker.Dockerfile").read_text()
    assert 'CMD ["cascade", "worker", "--check"]' in dockerfile


def test_worker_image_installs_the_pinned_torch_from_an_index_that_has_it():
    """The pinned version (the Makefile's TORCH_SPEC) from a CUDA index whose line carries it:
    cu124 ends at torch 2.6."""
    dockerfile = (REPO / "docker" / "worker.Dockerfile").read_text()
    makefile = (REPO / "Makefile").read_text()
    pinned = re.search(r"^TORCH_SPEC \?= (\S+)$", makefile, flags=re.MULTILINE).group(1)
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, flags=re.MULTILINE))
    assert args["TORCH_SPEC"] == pinned == "torch==2.13.0"
    index = args["TORCH_INDEX_URL"]
    assert re.fullmatch(r"https://download\.pytorch\.org/whl/cu(128|129|130)", index), index
    assert 'pip install "${TORCH_SPEC}" --index-url ${TORCH_INDEX_URL}' in dockerfile
    cuda = re.search(r"nvidia/cuda:(\d+)\.(\d+)", args["CUDA_IMAGE"]).groups()
    assert "".join(cuda) == index.rsplit("cu", 1)[1]  # the base image's CUDA matches the wheels


def test_dockerignore_keeps_the_context_small():
    ignored = set((REPO / ".dockerignore").read_text().split())
    assert {".git", ".venv", "results", "weights", ".env"} <= ignored
    assert not {"cascade", "jobs", "api", "workers"} & ignored  # what the images copy


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="no docker-compose binary")
@pytest.mark.parametrize("profiles", [[], ["--profile", "s3", "--profile", "remote"]])
def test_docker_compose_config_accepts_the_file(profiles: list[str]):
    result = subprocess.run(
        ["docker-compose", "-f", str(REPO / "docker-compose.yml"), *profiles, "config", "-q"],
        capture_output=True,
        text=True,
        env={"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp")},
        cwd=REPO,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
