"""The synchronous client (`Client`); `cascade_client.async_client` is the same over asyncio."""

from __future__ import annotations

import logging
from pathlib import Path
from time import sleep
from typing import Any

import httpx

from cascade_client import calls
from cascade_client.calls import Call
from cascade_client.errors import APIError, WaitTimeout
from cascade_client.events import EventParser
from cascade_client.models import Accepted, Job
from cascade_client.retry import RetryPolicy
from cascade_client.wait import EventCallback, Follow, deadline_of, remaining

log = logging.getLogger(__name__)


class Client:
    """The service at `base_url`, with `api_key` sent as a Bearer token where given. Every call
    is retried on 429/503 (after Retry-After) and network errors, within `retry`; every POST
    carries an Idempotency-Key, so a retry returns the job the first attempt made."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retry: RetryPolicy | None = None,
        transport: httpx.BaseTransport | None = None,
    ):
        self.retry = retry or RetryPolicy()
        self.http = httpx.Client(
            base_url=base_url,
            headers=calls.auth_headers(api_key),
            timeout=timeout,
            transport=transport,
        )

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        self.http.close()

    def send(self, call: Call) -> httpx.Response:
        """`call`, retried as `retry` allows; the last answer (a 4xx/5xx included)."""
        attempt = 0
        while True:
            try:
                response = self.http.request(
                    call.method,
                    call.path,
                    json=call.json,
                    data=call.data,
                    files=call.files,
                    headers=call.headers,
                )
            except httpx.TransportError as error:
                delay = self.retry.delay(attempt, None)
                if delay is None:
                    raise
                log.info("%s %s: %s; retrying in %.1f s", call.method, call.path, error, delay)
            else:
                delay = self.retry.delay(attempt, response)
                if delay is None:
                    return response
                log.info(
                    "%s %s: %d; retrying in %.1f s",
                    call.method,
                    call.path,
                    response.status_code,
                    delay,
                )
            sleep(delay)
            attempt += 1

    def generate(
        self,
        class_id: int | None = None,
        size: int = 256,
        *,
        class_name: str | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Accepted:
        """Queue a generation of an ImageNet class (`class_id` 0..999, or `class_name`) at
        `size` px (64, 256 or 1024). `options` are the request's other fields: seed, steps,
        sampler, guidance, color_fix, webhook_url, ... (`GET /v1/limits` lists the choices)."""
        call = calls.generation(class_id, class_name, size, options, idempotency_key)
        return Accepted.from_json(calls.checked(self.send(call)).json())

    def upscale(
        self,
        image: str | Path | bytes,
        scale: int | None = 4,
        *,
        target_size: int | None = None,
        filename: str | None = None,
        idempotency_key: str | None = None,
        **options: Any,
    ) -> Accepted:
        """Queue an upscale of a PNG, JPEG or WebP (a path or its bytes) by `scale` (4 or 16),
        or to `target_size` (the output's longer side; pass scale=None). `options`: fidelity,
        low_band, color_fix, seed, steps, sampler, webhook_url, ..."""
        if target_size is not None:
            scale = None
        call = calls.upscale(image, scale, target_size, options, filename, idempotency_key)
        return Accepted.from_json(calls.checked(self.send(call)).json())

    def get(self, job_id: str) -> Job:
        """The job as it stands: status, stage, per-stage progress, ETA, links."""
        return calls.job(self.send(Call("GET", calls.job_path(job_id))))

    def cancel(self, job_id: str) -> Job:
        """Cancel the job (its running stage stops within one sampler step); the job after."""
        return calls.job(self.send(Call("DELETE", calls.job_path(job_id))))

    def download(
        self, job_id: str, path: str | Path | None = None, *, stage: str | None = None
    ) -> bytes:
        """The job's result (or one `stage`'s image) as bytes, also written to `path` where
        given. APIError 409 while it is not ready, naming the job's status."""
        response = calls.checked(self.send(Call("GET", calls.image_path(job_id, stage))))
        return calls.write(response.content, path)

    def wait(
        self,
        job_id: str,
        timeout: float | None = None,
        *,
        on_event: EventCallback | None = None,
        events: bool = True,
        poll_interval: float = 1.0,
    ) -> Job:
        """Block until the job ends, and return it (whatever its end: check `job.status`).
        Follows the job's Server-Sent Events (`on_event` sees each one), resuming after the
        last event where the stream breaks; where it cannot be had (a proxy in the way, the
        route failing), or with `events=False`, polls every `poll_interval` seconds. Raises
        WaitTimeout after `timeout` seconds."""
        deadline = deadline_of(timeout)
        follow = Follow(job_id, timeout, deadline)
        if events:
            job = self._follow_events(follow, on_event)
            if job is not None:
                return job
        return self._poll(follow, poll_interval)

    def _follow_events(self, follow: Follow, on_event: EventCallback | None) -> Job | None:
        while follow.may_reconnect():
            try:
                with self.http.stream(
                    "GET",
                    calls.job_path(follow.job_id, "/events"),
                    headers=follow.headers(),
                    timeout=follow.stream_timeout(self.http.timeout),
                ) as response:
                    verdict = follow.opened(response, self.retry)
                    if verdict == "raise":
                        response.read()
                        raise APIError.from_response(response)
                    if verdict == "ended":
                        return self.get(follow.job_id)
                    if verdict == "poll":
                        log.info("no event stream for job %s: polling", follow.job_id)
                        return None
                    if verdict == "events":
                        parser = EventParser()
                        for line in response.iter_lines():
                            event = parser.feed(line)
                            if event is not None and (job := follow.seen(event, on_event)):
                                return job
                            follow.check_deadline()
                        follow.broke_off()  # closed before the terminal event: resume
                if verdict == "retry":
                    sleep(follow.delay)
            except httpx.TransportError as error:
                follow.check_deadline()
                log.info("events of job %s broke off (%s); resuming", follow.job_id, error)
                follow.broke_off()
        return None

    def _poll(self, follow: Follow, poll_interval: float) -> Job:
        while True:
            job = self.get(follow.job_id)
            follow.last = job
            if job.ended:
                return job
            left = remaining(follow.deadline)
            if left is not None and left <= 0:
                raise WaitTimeout(follow.job_id, follow.timeout or 0, job)
            sleep(poll_interval if left is None else min(poll_interval, left))
