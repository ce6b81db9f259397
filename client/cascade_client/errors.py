"""What the client raises: the service's JSON errors as `APIError`, a wait past its timeout as
`WaitTimeout`."""

from __future__ import annotations

from typing import TYPE_CHECKING

import httpx

if TYPE_CHECKING:
    from cascade_client.models import Job


class CascadeError(Exception):
    """Every error this client raises."""


class APIError(CascadeError):
    """A 4xx/5xx answer: its status, the service's sentence saying what was wrong (`error`),
    its `detail` where it gave one, and `retry_after` (seconds) where it said when to retry."""

    def __init__(
        self, status_code: int, error: str, detail: object = None, retry_after: float | None = None
    ):
        super().__init__(f"{status_code}: {error}")
        self.status_code = status_code
        self.error = error
        self.detail = detail
        self.retry_after = retry_after

    @classmethod
    def from_response(cls, response: httpx.Response) -> APIError:
        from cascade_client.retry import retry_after

        try:
            body = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and isinstance(body.get("error"), str):
            error, detail = body["error"], body.get("detail")
        else:
            error, detail = response.text[:500] or response.reason_phrase, None
        return cls(response.status_code, error, detail, retry_after(response))


class WaitTimeout(CascadeError, TimeoutError):
    """The job had not ended when the wait's timeout passed; `job` is its last state seen
    (None when none was read)."""

    def __init__(self, job_id: str, timeout: float, job: Job | None):
        status = f" (last seen {job.status}, {job.progress:.0%})" if job is not None else ""
        super().__init__(f"job {job_id} did not end within {timeout:g} s{status}")
        self.job_id = job_id
        self.job = job
