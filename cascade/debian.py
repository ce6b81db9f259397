"""Debian packages as a data source: fetched by name (`apt-get download`, then `dpkg-deb -x`),
unpacked once into a cache folder, with the licences their machine-readable copyright files
state. No network or no apt raises `DebianUnavailable`, which callers treat as "skip it".
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

log = logging.getLogger(__name__)

APT_TIMEOUT_S = 300.0
CACHE_MARKER = ".cascade-unpacked"


class DebianUnavailable(RuntimeError):
    """A Debian package could not be downloaded or unpacked."""


@dataclass(frozen=True)
class DebianPackage:
    """An unpacked Debian package: its name, version and root folder."""

    name: str
    version: str
    root: Path


def default_cache() -> Path:
    """The unpacked-package cache: $XDG_CACHE_HOME/cascade/debian (default ~/.cache/...)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cascade" / "debian"


def _run(command: list[str], cwd: Path | None = None) -> str:
    """Run `command` and return its stdout; DebianUnavailable with apt's error when it fails."""
    shown = " ".join(command)
    try:
        done = subprocess.run(
            command, cwd=cwd, capture_output=True, text=True, timeout=APT_TIMEOUT_S, check=False
        )
    except FileNotFoundError:
        raise DebianUnavailable(f"{command[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise DebianUnavailable(f"{shown} timed out after {APT_TIMEOUT_S:.0f} s") from None
    if done.stderr.strip():
        log.debug("%s: %s", shown, done.stderr.strip())
    if done.returncode != 0:
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("E:")] or lines
        detail = errors[-1] if errors else f"exit status {done.returncode}"
        raise DebianUnavailable(f"{shown} failed: {detail}")
    return done.stdout


def _download(package: str, folder: Path, update: bool) -> Path:
    """`apt-get download package` into `folder` (after `apt-get update` if the first try fails)."""
    start = time.monotonic()
    log.info("downloading Debian package %s (apt-get download)", package)
    try:
        _run(["apt-get", "download", package], cwd=folder)
    except DebianUnavailable as error:
        if not update:
            raise
        log.info("%s; refreshing the package lists (apt-get update) and retrying", error)
        try:
            _run(["apt-get", "update"])
        except DebianUnavailable as update_error:
            raise DebianUnavailable(f"{error}; then {update_error}") from None
        _run(["apt-get", "download", package], cwd=folder)
    debs = sorted(folder.glob("*.deb"))
    if len(debs) != 1:
        raise DebianUnavailable(f"apt-get download {package} left {len(debs)} .deb files")
    megabytes = debs[0].stat().st_size / 1e6
    log.info("downloaded %s (%.1f MB) in %.1f s", debs[0].name, megabytes, time.monotonic() - start)
    return debs[0]


def fetch_debian_package(package: str, cache: Path, update: bool = True) -> DebianPackage:
    """`package` unpacked under `cache/package`: downloaded and unpacked on first use only."""
    root = cache / package
    marker = root / CACHE_MARKER
    if marker.is_file():
        version = marker.read_text().strip()
        log.info("using Debian package %s %s cached in %s", package, version, root)
        return DebianPackage(package, version, root)
    for tool in ("apt-get", "dpkg-deb"):
        if shutil.which(tool) is None:
            raise DebianUnavailable(f"{tool} is not installed (not a Debian-based system?)")
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cascade-apt-") as scratch:
        deb = _download(package, Path(scratch), update)
        version = _run(["dpkg-deb", "--field", str(deb), "Version"]).strip()
        partial = cache / f"{package}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir()
        log.info("unpacking %s into %s", deb.name, root)
        _run(["dpkg-deb", "-x", str(deb), str(partial)])
        (partial / CACHE_MARKER).write_text(version + "\n")
        shutil.rmtree(root, ignore_errors=True)
        partial.rename(root)
    return DebianPackage(package, version, root)


def copyright_licences(path: Path) -> dict[str, str]:
    """File name -> License of a machine-readable Debian copyright file ({} when absent)."""
    if not path.is_file():
        return {}
    licences: dict[str, str] = {}
    for paragraph in re.split(r"\n[ \t]*\n", path.read_text(encoding="utf-8", errors="replace")):
        fields: dict[str, str] = {}
        key = None
        for line in paragraph.splitlines():
            match = re.match(r"([A-Za-z-]+):(.*)", line)
            if match:
                key = match[1]
                fields[key] = match[2]
            elif key is not None and line[:1] in (" ", "\t"):
                fields[key] += "\n" + line
        if "Files" in fields and "License" in fields:
            licence = fields["License"].strip().splitlines()[0].strip()
            for pattern in fields["Files"].split():
                licences[PurePosixPath(pattern).name] = licence
    return licences
