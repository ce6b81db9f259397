"""Webhooks: the job's terminal event (its view at its end, as the event log holds it) POSTed
as JSON to the job's `webhook_url`, off the GPU path.

A job's end only queues a delivery (`enqueue_delivery`, one RQ job on the `cascade-webhooks`
queue); a light sender process (`cascade webhooks`, `jobs.sender`) makes the request. Each
attempt has a total deadline (RQ's job timeout, so a receiver that hangs or sends a byte at a
time cannot hold it longer), a 5xx, 429 or network error is retried with backoff (RQ's `Retry`),
and every request is signed after the Standard Webhooks spec (`webhook-id`, `webhook-timestamp`,
`webhook-signature`: HMAC-SHA256 with `CASCADE_WEBHOOK_SECRET`) so receivers can verify it.

Internal destinations are refused at submission and again at send time after DNS resolution
(`jobs.destinations`); the request then goes to the address that was checked, so a name cannot
be re-pointed in between.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from urllib.parse import urlsplit, urlunsplit

from redis import Redis
from rq import Callback, Queue, Retry
from rq.serializers import JSONSerializer

from jobs.destinations import WebhookRefused, check_destination
from jobs.events import EventLog
from jobs.settings import Settings, get_settings

__all__ = ["WebhookRefused", "check_destination", "enqueue_delivery"]

log = logging.getLogger(__name__)
WEBHOOK_QUEUE = "cascade-webhooks"
DELIVER = "jobs.webhooks.deliver"
ON_FAILURE = "jobs.webhooks.on_delivery_failure"
BACKOFF = [2, 10, 30]  # seconds before the 1st, 2nd, 3rd... retry (the last repeats)


class WebhookFailed(RuntimeError):
    """A delivery a retry may mend (a 5xx, a 429, a network error)."""


def webhook_queue(connection: Redis) -> Queue:
    return Queue(WEBHOOK_QUEUE, connection=connection, serializer=JSONSerializer)


def enqueue_delivery(connection: Redis, settings: Settings, job_id: str, url: str) -> None:
    """Queue the POST of the job's terminal event; the sender makes it."""
    webhook_queue(connection).enqueue(
        DELIVER,
        job_id,
        url,
        job_id=f"{job_id}-webhook",
        job_timeout=max(1, round(settings.webhook_timeout)),  # each attempt's total deadline
        retry=Retry(max=settings.webhook_retries, interval=backoff(settings.webhook_retries))
        if settings.webhook_retries
        else None,
        on_failure=Callback(ON_FAILURE),
        result_ttl=3600,
        failure_ttl=settings.result_ttl,
        description=f"webhook of job {job_id}",
    )


def backoff(retries: int) -> list[int]:
    """One wait per retry, growing (RQ takes the list from its start)."""
    return [BACKOFF[min(index, len(BACKOFF) - 1)] for index in range(retries)]


def deliver(job_id: str, url: str) -> None:
    """RQ job in the sender: POST the job's terminal event to `url`, signed. A refused
    destination or a 4xx ends here; a 5xx, 429 or network error raises for RQ to retry."""
    import httpx  # the sender's dependency; the API only queues deliveries
    from rq import get_current_job

    settings = get_settings()
    current = get_current_job()
    connection = current.connection if current else None
    if connection is None:
        raise RuntimeError("deliver runs as an RQ job")
    event = EventLog(connection, settings.result_ttl).last(job_id)
    if event is None or not event.terminal:
        log.warning("webhook for job %s: the job has no terminal event", job_id)
        return
    try:
        addresses = check_destination(url, settings.webhook_allow, must_resolve=True)
    except WebhookRefused as error:
        log.warning("webhook for job %s not sent: %s", job_id, error)
        return
    body = json.dumps(event.data)
    parts = urlsplit(url)
    host = parts.hostname or ""
    pinned = str(addresses[0])
    netloc = f"[{pinned}]" if ":" in pinned else pinned
    if parts.port:
        netloc += f":{parts.port}"
    headers = {
        "Content-Type": "application/json",
        "User-Agent": "cascade-webhook",
        "Host": parts.netloc.rpartition("@")[2],
        "X-Cascade-Event": event.type,
        "X-Cascade-Event-Id": event.id,
        **signature(settings, event.id, body),
    }
    try:
        with httpx.Client(timeout=settings.webhook_timeout, follow_redirects=False) as client:
            request = client.build_request(
                "POST",
                urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
                content=body,
                headers=headers,
                extensions={"sni_hostname": host},  # TLS checks the name, not the pinned IP
            )
            response = client.send(request)
    except httpx.HTTPError as error:
        raise WebhookFailed(f"webhook {host} for job {job_id}: {error}") from None
    log.info("webhook %s for job %s: HTTP %s", host, job_id, response.status_code)
    if response.status_code >= 500 or response.status_code == 429:
        raise WebhookFailed(f"webhook {host} for job {job_id}: HTTP {response.status_code}")


def signature(settings: Settings, message_id: str, body: str) -> dict[str, str]:
    """Standard Webhooks headers; only the id and timestamp when no secret is set."""
    from standardwebhooks.webhooks import Webhook

    timestamp = datetime.now(UTC)
    headers = {"webhook-id": message_id, "webhook-timestamp": str(int(timestamp.timestamp()))}
    if settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
        headers["webhook-signature"] = Webhook(secret).sign(message_id, timestamp, body)
    return headers


def on_delivery_failure(job, connection: Redis, exc_type: type, exc_value: object, tb: object):
    """RQ failure callback: say what happened (RQ retries while retries remain)."""
    job_id, url = job.args
    what = "retrying" if job.retries_left else "giving up"
    log.warning(
        "webhook for job %s failed (%s: %s); %s", job_id, exc_type.__name__, exc_value, what
    )
