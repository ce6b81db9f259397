"""Webhooks: POST the job's terminal event (its view at its end, as the event log holds it) as
JSON when it ends. Best effort: failures are logged only."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

from jobs.events import EventLog

log = logging.getLogger(__name__)


def send_webhook(
    url: str, payload: dict[str, object], timeout: float, headers: dict[str, str] | None = None
) -> bool:
    """POST `payload` to `url`; True on a 2xx answer. Never raises: the job's outcome is already
    recorded, and a slow or broken receiver must not fail it."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={
            "Content-Type": "application/json",
            "User-Agent": "cascade-webhook",
            **(headers or {}),
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            log.info("webhook %s for job %s: HTTP %s", url, payload.get("id"), response.status)
            return True
    except (urllib.error.URLError, OSError, ValueError) as error:
        log.warning("webhook %s for job %s failed: %s", url, payload.get("id"), error)
        return False


def send_end(events: EventLog, job_id: str, url: str, timeout: float) -> bool:
    """POST the job's terminal event to `url`: its data is the body, its type and id go in the
    `X-Cascade-Event` and `X-Cascade-Event-Id` headers (the id SSE clients see)."""
    event = events.last(job_id)
    if event is None or not event.terminal:
        log.warning("webhook %s for job %s: the job has no terminal event", url, job_id)
        return False
    headers = {"X-Cascade-Event": event.type, "X-Cascade-Event-Id": event.id}
    return send_webhook(url, event.data, timeout, headers)
