"""Webhooks: POST the job's view as JSON when it ends. Best effort: failures are logged only."""

from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

log = logging.getLogger(__name__)


def send_webhook(url: str, payload: dict[str, object], timeout: float) -> bool:
    """POST `payload` to `url`; True on a 2xx answer. Never raises: the job's outcome is already
    recorded, and a slow or broken receiver must not fail it."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "cascade-webhook"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            log.info("webhook %s for job %s: HTTP %s", url, payload.get("id"), response.status)
            return True
    except (urllib.error.URLError, OSError, ValueError) as error:
        log.warning("webhook %s for job %s failed: %s", url, payload.get("id"), error)
        return False
