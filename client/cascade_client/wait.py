"""Following a job to its end, the part the sync and async clients share: what an events
route's answer means, the events seen so far (so a broken stream resumes after the last one),
the deadline."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from time import monotonic
from typing import Literal

import httpx

from cascade_client.errors import WaitTimeout
from cascade_client.events import Event
from cascade_client.models import Job
from cascade_client.retry import RETRIED_STATUSES, RetryPolicy

EventCallback = Callable[[Event], object]
Verdict = Literal["events", "ended", "retry", "raise", "poll"]
READ_SECONDS = 45.0  # the service pings a quiet stream every 15 s: longer silence is a dead one
MAX_BREAKS = 3  # streams that broke off before the client turns to polling


def deadline_of(timeout: float | None) -> float | None:
    return None if timeout is None else monotonic() + timeout


def remaining(deadline: float | None) -> float | None:
    return None if deadline is None else deadline - monotonic()


@dataclass
class Follow:
    """One wait on one job: the last event id, how often the stream broke off, the deadline."""

    job_id: str
    timeout: float | None
    deadline: float | None
    last_event_id: str | None = None
    breaks: int = 0
    retries: int = 0
    delay: float = 0.0
    last: Job | None = field(default=None, repr=False)

    def may_reconnect(self) -> bool:
        return self.breaks < MAX_BREAKS

    def headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream"}
        if self.last_event_id is not None:
            headers["Last-Event-ID"] = self.last_event_id
        return headers

    def stream_timeout(self, default: httpx.Timeout) -> httpx.Timeout:
        """The client's timeouts, reading for at most READ_SECONDS or what is left."""
        left = remaining(self.deadline)
        read = READ_SECONDS if left is None else max(0.01, min(READ_SECONDS, left))
        return httpx.Timeout(default.connect, read=read, write=default.write, pool=default.pool)

    def opened(self, response: httpx.Response, policy: RetryPolicy) -> Verdict:
        """What the events route's answer means: a stream to read; the job already ended
        (204 after its last event); retry after `self.delay` (429/503); an error to raise (a
        refused key); or no stream to be had here (a proxy, a failing route): poll."""
        if response.status_code == 200:
            kind = response.headers.get("content-type", "")
            return "events" if kind.startswith("text/event-stream") else "poll"
        if response.status_code == 204:
            return "ended"
        if response.status_code in (401, 403):
            return "raise"
        if response.status_code in RETRIED_STATUSES:
            delay = policy.delay(self.retries, response)
            if delay is None:
                return "raise"
            self.retries += 1
            self.delay = min(delay, max(0.0, remaining(self.deadline) or delay))
            return "retry"
        return "poll"  # polling reports an unknown job (404) in the service's own words

    def seen(self, event: Event, on_event: EventCallback | None) -> Job | None:
        """Note the event; the job at its end when it is the terminal one."""
        if event.id is not None:
            self.last_event_id = event.id
        if on_event is not None:
            on_event(event)
        if event.terminal and isinstance(event.data, dict):
            self.last = Job.from_json(event.data)
            return self.last
        return None

    def check_deadline(self) -> None:
        left = remaining(self.deadline)
        if left is not None and left <= 0:
            raise WaitTimeout(self.job_id, self.timeout or 0, self.last)

    def broke_off(self) -> None:
        self.breaks += 1
