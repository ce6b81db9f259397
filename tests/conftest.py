"""Shared test fixtures and helpers: the parity fixture root, CPU determinism, a real Redis per
module, free loopback ports, waiting on a condition or for a server to listen; one CPU thread
per test process."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import torch

from jobs.connection import EmbeddedRedis
from jobs.settings import Settings

# One torch thread per test process, and per process a test starts (they inherit the variable):
# the suite runs several processes on a few cores, and a thread team larger than the free
# cores spin-waits, costing many times the work it does (a sampler test file: 12x the CPU).
os.environ["OMP_NUM_THREADS"] = "1"
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
CASCADE = str(REPO / ".venv" / "bin" / "cascade")


def parity_root() -> Path:
    """Fixture root from CASCADE_PARITY_DIR (default ../shared/parity next to the checkout)."""
    return Path(os.environ.get("CASCADE_PARITY_DIR", REPO.parent / "shared" / "parity"))


@pytest.fixture(scope="session")
def parity_dir() -> Path:
    root = parity_root()
    if not (root / "sr3").is_dir() or not (root / "adm").is_dir():
        pytest.fail(f"parity fixtures not found under {root} (set CASCADE_PARITY_DIR)")
    return root


@pytest.fixture(scope="session")
def sr3_config(parity_dir: Path) -> dict:
    return json.loads((parity_dir / "sr3" / "config.json").read_text())


@pytest.fixture(scope="session")
def adm_config(parity_dir: Path) -> dict:
    return json.loads((parity_dir / "adm" / "config.json").read_text())


@pytest.fixture(autouse=True)
def _deterministic_cpu():
    torch.manual_seed(0)
    yield


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    """A real Redis server (embedded, its own data folder) for one test module."""
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis") / "test.rdb")
    yield server
    server.stop()


@pytest.fixture
def tmpfs(tmp_path: Path) -> Iterator[Callable[[str, int], Path]]:
    """`tmpfs(name, megabytes)`: a small disk that fills, mounted at tmp_path / name and
    unmounted afterwards; skips the test where mounting is not permitted (it needs root)."""
    mounted: list[Path] = []

    def mount(name: str, megabytes: int) -> Path:
        path = tmp_path / name
        path.mkdir()
        if shutil.which("mount") is None:
            pytest.skip("no mount command to make a small tmpfs")
        command = ["mount", "-t", "tmpfs", "-o", f"size={megabytes}m", "tmpfs", str(path)]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
        mounted.append(path)
        return path

    yield mount
    for path in mounted:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)  # still busy


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a server a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for(condition: Callable[[], object], timeout: float, what: str) -> object:
    """Poll `condition` until it returns something truthy (returned), or fail after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := condition():
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def wait_listening(port: int, process: subprocess.Popen, timeout: float, what: str) -> None:
    """Wait until something accepts connections on 127.0.0.1:`port` (uvicorn listens once its
    app has started); fail at once if `process` exits first."""

    def listening() -> bool:
        assert process.poll() is None, f"{what} exited with {process.returncode}"
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_for(listening, timeout, f"{what} to listen on port {port}")


def service_env(settings: Settings | None = None, **variables: object) -> dict[str, str]:
    """The environment of a service process a test starts: this one's without its CASCADE_*
    variables, then `settings` and `variables` (setting names) as CASCADE_* variables."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("CASCADE_")}
    fields = settings.model_dump(exclude_none=True) if settings is not None else {}
    for name, value in {**fields, **variables}.items():
        env[f"CASCADE_{name.upper()}"] = str(value)
    return env


def start_worker(settings: Settings, log: Path, stages: str = "base64") -> subprocess.Popen:
    """`cascade worker --stages STAGES` with `settings`, its output in `log`."""
    with open(log, "w") as out:
        return subprocess.Popen(
            [CASCADE, "worker", "--stages", stages],
            env=service_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )


class S3Server:
    """moto's S3 server speaking real HTTP on 127.0.0.1 (its own process, so a test can
    SIGSTOP, SIGCONT or kill it like an S3 service that hangs or goes away)."""

    def __init__(self, log: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        with open(log, "w") as out:
            self.process = subprocess.Popen(
                [
                    str(REPO / ".venv" / "bin" / "moto_server"),
                    "-H",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                ],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        wait_for(self.answers, 30, "moto's S3 server to start")

    def answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as probe:
                probe.sendall(b"GET /moto-api/ HTTP/1.0\r\n\r\n")
                return probe.recv(12).startswith(b"HTTP/")
        except OSError:
            return False

    def settings(self, bucket: str, **fields: object) -> Settings:
        """Settings whose store is `bucket` on this server (moto takes any credentials)."""
        return Settings(
            store=f"s3://{bucket}/results",
            s3_endpoint_url=self.url,
            s3_region="us-east-1",
            s3_access_key_id="test",
            s3_secret_access_key="test",
            **fields,
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture(scope="module")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """A moto S3 server on 127.0.0.1 for the module's tests."""
    server = S3Server(tmp_path_factory.mktemp("s3") / "moto.log")
    yield server
    server.stop()
