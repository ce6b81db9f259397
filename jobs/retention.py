"""Retention: stored results (PNGs, job.json) older than the job-record TTL are deleted, from
the local folder or the S3 bucket, so the store does not outgrow the jobs that point into it.

Run by the workers' maintenance (at most once per `retention_interval`, by one worker: a Redis
lock) and by `cascade gc` (`python -m jobs.retention`) on demand."""

from __future__ import annotations

import argparse
import logging
import time

from redis import Redis

from cascade import logformat
from jobs.settings import Settings, get_settings
from jobs.store import Store, open_store

log = logging.getLogger(__name__)
LOCK = "cascade:retention"


def collect(store: Store, settings: Settings, now: float | None = None) -> list[str]:
    """Delete results older than `settings.result_ttl`; the job ids deleted."""
    now = time.time() if now is None else now
    deleted = store.delete_older_than(now - settings.result_ttl)
    if deleted:
        log.info("retention: deleted the stored results of %d expired jobs", len(deleted))
    return deleted


def collect_if_due(connection: Redis, store: Store, settings: Settings) -> list[str] | None:
    """`collect`, unless another process did within `retention_interval` (None then)."""
    if not connection.set(LOCK, "1", nx=True, ex=settings.retention_interval):
        return None
    return collect(store, settings)


def main(args: argparse.Namespace) -> None:
    settings = get_settings()
    deleted = collect(open_store(settings), settings)
    print(f"deleted the stored results of {len(deleted)} jobs older than {settings.result_ttl} s")


def register(commands: argparse._SubParsersAction) -> None:
    """`cascade gc` (a `cascade.commands` entry point)."""
    command = commands.add_parser("gc", help="delete stored results older than the job TTL")
    command.set_defaults(run=main)


if __name__ == "__main__":
    logformat.configure()
    main(argparse.ArgumentParser(prog="cascade gc").parse_args())
