"""`cascade webhooks`: the light sender that POSTs queued webhooks (`jobs.webhooks`), never
inside a stage job, so a slow receiver costs no GPU time; torch-free (it runs beside the API).

One asyncio process makes up to `CASCADE_WEBHOOK_CONCURRENCY` deliveries at once, at most
`CASCADE_WEBHOOK_PER_DESTINATION` of them to one host:port, so a receiver that hangs holds only
its own deliveries, each until its deadline, and everyone else's go on. A queued delivery wakes
it at once; retries come due after their backoff. It renews its claims every
`CASCADE_HEARTBEAT_INTERVAL`; killed, its claims lapse after `CASCADE_HEARTBEAT_TTL` and any
sender (the restarted one) retries them. Several senders may run: claims are atomic, and each
keeps its own limits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import ssl
import time
from concurrent.futures import ThreadPoolExecutor

from redis import Redis
from redis.exceptions import RedisError
from rq import Queue
from rq.job import Job
from rq.serializers import JSONSerializer

from cascade import logformat
from jobs.connection import connect
from jobs.settings import Settings, get_settings
from jobs.stats import record_webhook
from jobs.webhooks import WAKE, Claim, DeliveryQueue, Result, attempt, enqueue_delivery

log = logging.getLogger(__name__)
RQ_QUEUE = "cascade-webhooks"  # where deliveries waited when RQ sent them (`adopt_rq_deliveries`)
TICK = 1.0  # seconds between looks at the queue when nothing wakes the sender sooner


class Sender:
    """Claims due deliveries and makes them concurrently, within the two limits."""

    def __init__(self, connection: Redis, settings: Settings):
        self.connection = connection
        self.settings = settings
        self.queue = DeliveryQueue(connection, settings)
        self.in_flight: dict[asyncio.Task[None], Claim] = {}
        self.stopping = False

    def stop(self) -> None:
        """Claim nothing more; `run` returns once the attempts in flight have ended."""
        log.info("webhook sender stopping after %d attempts in flight", len(self.in_flight))
        self.stopping = True

    def busy(self) -> dict[str, int]:
        """Attempts in flight per destination."""
        counts: dict[str, int] = {}
        for claim in self.in_flight.values():
            counts[claim.destination] = counts.get(claim.destination, 0) + 1
        return counts

    async def run(self, *, burst: bool = False) -> None:
        """Send until stopped or, with `burst`, until nothing is due or in flight."""
        import httpx  # the sender's dependency; the API only queues deliveries

        tls = httpx.create_ssl_context()  # once for every attempt: loading the CAs costs CPU
        # Resolution and Redis calls run in threads: enough for every attempt and the waker.
        workers = self.settings.webhook_concurrency + 2
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(workers))
        wake: asyncio.Future[None] | None = None
        renewed = time.monotonic()
        delay = 0.5
        while not self.stopping or self.in_flight:
            try:
                if time.monotonic() - renewed >= self.settings.heartbeat_interval:
                    holding = [claim.job_id for claim in self.in_flight.values()]
                    await asyncio.to_thread(self.queue.renew, holding)
                    renewed = time.monotonic()
                claims: list[Claim] = []
                if not self.stopping:
                    free = self.settings.webhook_concurrency - len(self.in_flight)
                    claims, lapsed = await asyncio.to_thread(self.queue.claim, free, self.busy())
                    for job_id, what in lapsed:
                        log.warning(
                            "webhook for job %s: its sender stopped during the attempt; %s",
                            job_id,
                            "retrying" if what == "retry" else "giving up",
                        )
                delay = 0.5
            except RedisError as error:
                log.warning(
                    "webhook sender cannot reach Redis (%s); retrying in %.1f s", error, delay
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.settings.redis_backoff_max)
                continue
            for claim in claims:
                self.in_flight[asyncio.create_task(self._send(claim, tls))] = claim
            if not self.in_flight and (burst or self.stopping):
                return
            waiting: set[asyncio.Future] = set(self.in_flight)
            room = len(self.in_flight) < self.settings.webhook_concurrency
            if room and not burst and not self.stopping:
                if wake is None or wake.done():
                    wake = asyncio.ensure_future(asyncio.to_thread(self._wait_for_work))
                waiting.add(wake)
            done, _ = await asyncio.wait(waiting, timeout=TICK, return_when="FIRST_COMPLETED")
            for task in done:
                self.in_flight.pop(task, None)  # type: ignore[call-overload]

    def _wait_for_work(self) -> None:
        """Block until a delivery is queued (or a tick passes)."""
        try:
            self.connection.blpop([WAKE], timeout=TICK)
        except RedisError:
            time.sleep(TICK)  # the main loop reports the outage

    async def _send(self, claim: Claim, tls: ssl.SSLContext) -> None:
        """One attempt, then its outcome recorded and logged."""
        try:
            result = await attempt(self.connection, claim, tls)
        except Exception as error:  # a fault here must neither kill the sender nor lose it
            log.exception("webhook for job %s: the attempt raised", claim.job_id)
            result = Result("failed", f"{type(error).__name__}: {error}")
        try:
            status = await asyncio.to_thread(self.queue.finish, claim, result)
        except RedisError as error:
            log.warning(
                "webhook for job %s: %s, not recorded (%s); it is retried when its claim lapses",
                claim.job_id,
                result.detail,
                error,
            )
            return
        if status is not None:
            outcome = result.outcome
            if outcome not in ("sent", "refused", "skipped"):
                outcome = "failed" if status == "queued" else "gave_up"
            try:
                record_webhook(self.connection, outcome)
            except RedisError:
                pass  # a counter: the delivery itself is recorded
        if status is None:
            log.warning("webhook for job %s: claim lapsed; another sender has it", claim.job_id)
        elif result.outcome == "sent":
            log.info("webhook %s for job %s: %s", claim.destination, claim.job_id, result.detail)
        elif result.outcome in ("refused", "skipped"):
            log.warning("webhook for job %s not sent: %s", claim.job_id, result.detail)
        else:
            what = "retrying" if status == "queued" else f"giving up after {claim.attempt} attempts"
            log.warning("webhook for job %s failed (%s); %s", claim.job_id, result.detail, what)


def adopt_rq_deliveries(connection: Redis, settings: Settings) -> int:
    """Move deliveries that a version sending webhooks through RQ left queued or awaiting a
    retry into the sender's queue (none are lost across the upgrade); how many."""
    queue = Queue(RQ_QUEUE, connection=connection, serializer=JSONSerializer)
    job_ids = queue.get_job_ids() + queue.scheduled_job_registry.get_job_ids()
    adopted = 0
    for job in Job.fetch_many(job_ids, connection=connection, serializer=JSONSerializer):
        if job is not None and len(job.args) == 2:
            enqueue_delivery(connection, settings, *job.args)
            adopted += 1
        if job is not None:
            job.delete()
    return adopted


def deliver_pending(connection: Redis, settings: Settings) -> None:
    """Send every webhook due now and return (tests, one-off runs)."""
    asyncio.run(Sender(connection, settings).run(burst=True))


async def serve(connection: Redis, settings: Settings, *, burst: bool) -> None:
    """Run a sender until SIGINT/SIGTERM (then let its attempts in flight end)."""
    sender = Sender(connection, settings)
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, sender.stop)
    while True:
        try:
            adopted = await asyncio.to_thread(adopt_rq_deliveries, connection, settings)
            break
        except RedisError as error:
            log.warning("webhook sender cannot reach Redis (%s); retrying", error)
            await asyncio.sleep(settings.redis_backoff_max)
    if adopted:
        log.info("webhook sender took over %d deliveries queued through RQ", adopted)
    log.info(
        "webhook sender listening: %d at once, %d per destination",
        settings.webhook_concurrency,
        settings.webhook_per_destination,
    )
    await sender.run(burst=burst)


def main(args: argparse.Namespace) -> None:
    """Send webhooks until stopped; ride out Redis outages like the stage workers."""
    settings = get_settings()
    asyncio.run(serve(connect(settings), settings, burst=args.burst))


def register(commands: argparse._SubParsersAction) -> None:
    """`cascade webhooks` (a `cascade.commands` entry point)."""
    command = commands.add_parser("webhooks", help="send queued webhooks")
    command.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    command.set_defaults(run=main)


if __name__ == "__main__":  # `python -m jobs.sender`, as `cascade serve` starts it
    logformat.configure()
    parser = argparse.ArgumentParser(prog="cascade webhooks", description="send queued webhooks")
    parser.add_argument("--burst", action="store_true", help="exit when the queue is empty")
    main(parser.parse_args())
