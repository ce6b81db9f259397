"""When to send a request again: 429 and 503 answers after their `Retry-After`, network errors
after a backoff, a bounded number of times, each wait capped. POSTs are safe to repeat because
the client sends each one with an Idempotency-Key (the service returns the same job)."""

from __future__ import annotations

import email.utils
import time
from dataclasses import dataclass

import httpx

RETRIED_STATUSES = (429, 503)


@dataclass(frozen=True)
class RetryPolicy:
    """`retries` further attempts at most; each waits the answer's Retry-After, else
    `backoff` x 2^attempt, never more than `max_delay` seconds."""

    retries: int = 4
    backoff: float = 0.5
    max_delay: float = 30.0

    def delay(self, attempt: int, response: httpx.Response | None) -> float | None:
        """Seconds to wait before attempt `attempt + 1` (attempt counts from 0), or None: do
        not retry (out of attempts, or an answer that a retry cannot mend)."""
        if attempt >= self.retries:
            return None
        if response is not None:
            if response.status_code not in RETRIED_STATUSES:
                return None
            after = retry_after(response)
            if after is not None:
                return min(after, self.max_delay)
        return min(self.backoff * 2**attempt, self.max_delay)


def retry_after(response: httpx.Response, now: float | None = None) -> float | None:
    """The Retry-After header in seconds (delta-seconds or an HTTP date), None if absent or
    unreadable."""
    value = response.headers.get("retry-after")
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
