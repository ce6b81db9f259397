"""A worker's memory against a stage job's need: a job this worker cannot hold fails at once
with a sentence naming both figures, rather than the process being killed mid-stage."""

from __future__ import annotations

from pathlib import Path

from jobs.estimate import memory_mb
from jobs.record import JobRecord
from jobs.settings import Settings
from workers.runtime import Runtime


def memory_refusal(runtime: Runtime, record: JobRecord, stage: str) -> str | None:
    """Why this worker cannot run `stage` of the job for want of memory, or None when it can."""
    planned = next(planned for planned in record.plan if planned.name == stage)
    need, have = memory_mb(planned), worker_memory_mb(runtime.settings)
    if need <= have:
        return None
    return (
        f"a {planned.width}x{planned.height} output needs about {need} MB and this worker has "
        f"{have} MB (CASCADE_WORKER_MEMORY_MB, else its available memory): ask for a smaller "
        "output, or run it on a worker with more memory"
    )


def worker_memory_mb(settings: Settings) -> int:
    """The memory (MB) this worker may use for a stage job: `worker_memory_mb` when set, else
    this machine's available memory plus what the worker holds already (its models count in
    every job's need; `jobs.estimate.memory_mb`)."""
    if settings.worker_memory_mb:
        return settings.worker_memory_mb
    try:
        import psutil
    except ImportError:  # /proc/meminfo and /proc/self/status say the same on Linux
        available_kb = _proc_kb("/proc/meminfo", "MemAvailable")
        return (available_kb + _proc_kb("/proc/self/status", "VmRSS")) // 1024
    held = psutil.Process().memory_info().rss
    return int((psutil.virtual_memory().available + held) / 2**20)


def _proc_kb(path: str, name: str) -> int:
    """A `Name:   1234 kB` line of a /proc file, in kB."""
    fields = dict(line.split(":", 1) for line in Path(path).read_text().splitlines())
    return int(fields[name].split()[0])
