"""Job and stage statuses, defined once: Python, the Lua guards (`lua_ended`) and the page
(`/vocabulary.js`, made from them by `api.routes.page`) all read them from here."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    """Where a job stands: queued, then running, then one of the three ends."""

    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


class StageStatus(StrEnum):
    """Where one stage of a job stands; `pending` until the stage before it has finished."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELED = "canceled"


# A job (or stage) in one of these has ended: nothing changes it again.
TERMINAL: tuple[JobStatus, ...] = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELED)
# Stages a cancel ends before they ran.
WAITING: tuple[StageStatus, ...] = (StageStatus.PENDING, StageStatus.QUEUED)


def lua_ended(variable: str = "status") -> str:
    """A Lua condition: whether the status in local `variable` (false: the record is gone) is
    terminal."""
    ended = " or ".join(f"{variable} == '{status}'" for status in TERMINAL)
    return f"(not {variable}) or {ended}"


def lua_list(statuses: tuple[str, ...]) -> str:
    """A Lua table literal used as a set: `{['queued']=true, ...}`."""
    return "{" + ", ".join(f"['{status}']=true" for status in statuses) + "}"
