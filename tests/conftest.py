"""Shared test fixtures: the parity fixture root, CPU determinism, a real Redis per module."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from jobs.connection import EmbeddedRedis

REPO = Path(__file__).resolve().parents[1]


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
