"""Where a job's links point: paths from the API's root, or absolute URLs under
`CASCADE_PUBLIC_URL`; and the result's direct URL, presigned by an S3 store where
`CASCADE_PRESIGN_RESULTS` asks for it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from jobs.settings import Settings
from jobs.store import S3Store, Store, object_name, result_name


@dataclass(frozen=True)
class Urls:
    """`base` ("" for relative links) before every API path; `presign` turns a store key into a
    URL that reaches the object directly (None: results are fetched through the API)."""

    base: str = ""
    presign: Callable[[str], str] | None = None

    def link(self, path: str) -> str:
        return f"{self.base}{path}"

    def job(self, job_id: str, suffix: str = "") -> str:
        return self.link(f"/v1/jobs/{job_id}{suffix}")

    def result_url(self, job_id: str, format: str = "png") -> str:
        """Where a succeeded job's result (in `format`) can be downloaded."""
        if self.presign is not None:
            return self.presign(object_name(job_id, result_name(format)))
        return self.job(job_id, "/result")


RELATIVE = Urls()


def job_urls(settings: Settings, store: Store | None = None) -> Urls:
    """The links `settings` asks for; presigned results only where `store` is an S3 bucket."""
    presign = None
    if settings.presign_results and isinstance(store, S3Store):
        seconds = settings.presign_seconds

        def presign(key: str) -> str:
            return store.presigned_url(key, seconds)

    return Urls(settings.public_url or "", presign)
