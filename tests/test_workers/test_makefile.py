"""The Makefile's torch install, dry-run (`make -n`): the pinned torch from the index asked
for, installed once, and re-installed when the spec or the index changes."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CU130 = "https://download.pytorch.org/whl/cu130"

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="no make binary")


def dry_run(venv: Path, **variables: str) -> list[str]:
    """The commands `make setup` would run; the stamps it would touch are made, as a real run
    would leave them."""
    command = ["make", "-n", "-C", str(REPO), "setup", f"VENV={venv}"]
    command += [f"{name}={value}" for name, value in variables.items()]
    lines = subprocess.run(command, capture_output=True, text=True, check=True).stdout.splitlines()
    for line in lines:
        if touched := re.fullmatch(r"touch (\S+)", line.strip()):
            Path(touched.group(1)).touch()
    return lines


def torch_installs(lines: list[str]) -> list[str]:
    return [line for line in lines if re.search(r"pip install -q \"torch", line)]


def test_torch_is_installed_from_the_index_and_again_only_when_it_changes(tmp_path: Path):
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").touch()  # the venv exists: only the installs are in question
    first = dry_run(venv)  # a CPU set-up: the default index
    assert torch_installs(first) == [f'{venv}/bin/python -m pip install -q "torch==2.13.0" ']
    assert torch_installs(dry_run(venv)) == []  # nothing changed: nothing installed
    cuda = dry_run(venv, PIP_TORCH_INDEX=CU130)  # the same user asks for CUDA
    assert any("pip uninstall -q -y torch" in line for line in cuda)
    assert torch_installs(cuda) == [
        f'{venv}/bin/python -m pip install -q "torch==2.13.0" --index-url {CU130}'
    ]
    assert torch_installs(dry_run(venv, PIP_TORCH_INDEX=CU130)) == []
    other = dry_run(venv, PIP_TORCH_INDEX=CU130, TORCH_SPEC="torch==2.12.1")
    assert torch_installs(other) == [
        f'{venv}/bin/python -m pip install -q "torch==2.12.1" --index-url {CU130}'
    ]
