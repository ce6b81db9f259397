"""The client is its own torch-free distribution: its wheel needs only httpx and holds only
the client, and importing it loads none of the service's packages."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_wheel_needs_only_httpx(tmp_path: Path):
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation"]
        + ["-w", str(tmp_path), str(REPO / "client")],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("cascade_client-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        (metadata,) = [name for name in names if name.endswith(".dist-info/METADATA")]
        requires = [
            line.split(":", 1)[1].strip()
            for line in archive.read(metadata).decode().splitlines()
            if line.startswith("Requires-Dist:")
        ]
    assert requires == ["httpx>=0.27"]
    packages = {name.split("/")[0] for name in names if not name.startswith("cascade_client-")}
    assert packages == {"cascade_client"}


def test_importing_it_loads_no_service_package():
    service = ("torch", "numpy", "cascade", "jobs", "api", "workers", "fastapi", "redis")
    code = (
        "import sys, cascade_client; "
        f"print(sorted(name for name in {service!r} if name in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO / "client",
        env={"PYTHONPATH": str(REPO / "client")},
        capture_output=True,
        text=True,
        check=True,
    )
    assert done.stdout.strip() == "[]"
