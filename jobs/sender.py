"""`cascade webhooks`: the light sender that POSTs queued webhooks (`jobs.webhooks`), never
inside a stage job, so a slow receiver costs no GPU time. An RQ SimpleWorker on the webhooks
queue, with RQ's scheduler for retries after a backoff; torch-free (it runs beside the API)."""

from __future__ import annotations

import argparse
import logging

from redis import Redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from rq import SimpleWorker
from rq.serializers import JSONSerializer

from jobs.connection import connect, stop_requested, wait_for_redis
from jobs.settings import Settings, get_settings
from jobs.webhooks import webhook_queue

log = logging.getLogger(__name__)


def sender(connection: Redis, settings: Settings) -> SimpleWorker:
    """The sender's RQ worker (jobs run in its own process: no fork per webhook)."""
    return SimpleWorker(
        [webhook_queue(connection)],
        connection=connection,
        serializer=JSONSerializer,
        maintenance_interval=settings.maintenance_interval,
    )


def deliver_pending(connection: Redis, settings: Settings) -> None:
    """Send every queued webhook now and return (tests, one-off runs)."""
    sender(connection, settings).work(burst=True, with_scheduler=False)


def main(args: argparse.Namespace) -> None:
    """Send webhooks until stopped; ride out Redis outages like the stage workers."""
    settings = get_settings()
    connection = connect(settings)
    while True:
        wait_for_redis(connection, settings)
        worker = sender(connection, settings)
        log.info("webhook sender %s listening", worker.name)
        try:
            worker.work(burst=args.burst, with_scheduler=True, logging_level="INFO")
        except (RedisConnectionError, RedisTimeoutError) as error:
            log.warning("webhook sender lost Redis while stopping: %s", error)
        if stop_requested(worker) or args.burst:
            return
        log.warning("webhook sender %s stopped (Redis unreachable?); starting again", worker.name)


def register(commands: argparse._SubParsersAction) -> None:
    """`cascade webhooks` (a `cascade.commands` entry point)."""
    command = commands.add_parser("webhooks", help="send queued webhooks")
    command.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    command.set_defaults(run=main)


if __name__ == "__main__":  # `python -m jobs.sender`, as `cascade serve` starts it
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    parser = argparse.ArgumentParser(prog="cascade webhooks", description="send queued webhooks")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    main(parser.parse_args())
