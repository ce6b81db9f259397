"""Webhooks: the job's terminal event (its view at its end, as the event log holds it) POSTed
as JSON to the job's `webhook_url`, off the GPU path.

A job's end only queues a delivery (`enqueue_delivery`); a light sender process (`cascade
webhooks`, `jobs.sender`) makes the requests, many at once. Each attempt has a total deadline
(`CASCADE_WEBHOOK_TIMEOUT`, name resolution included, so a receiver that hangs or sends a byte at
a time cannot hold it longer), a 5xx, 429 or network error is retried with backoff (`BACKOFF`,
`CASCADE_WEBHOOK_RETRIES` times), and every request is signed after the Standard Webhooks spec
(`webhook-id`, `webhook-timestamp`, `webhook-signature`: HMAC-SHA256 with
`CASCADE_WEBHOOK_SECRET`) so receivers can verify it. Internal destinations are refused at
submission and again at send time after DNS resolution (`jobs.destinations`); the request then
goes to the address that was checked, so a name cannot be re-pointed in between.

The queue is two sorted sets and a record per delivery, moved only by the Lua scripts below:
`due` (job id -> when its next attempt may start), `sending` (job id -> when the claim of the
sender making it lapses; a live sender renews its claims, so a lapsed one means that sender
died) and the record `cascade:webhook:{job id}` (URL, deadline, retries, attempts, status). A
claim is atomic, so no two senders make the same attempt; a delivery whose sender was killed
is due again once its claim lapses, the interrupted attempt counting as one (at least once:
a receiver that got the request before the kill may get it again, with the same `webhook-id`).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from redis import Redis

from jobs.destinations import WebhookRefused, check_destination, destination
from jobs.events import EventLog
from jobs.settings import Settings, get_settings

__all__ = ["WebhookRefused", "check_destination", "enqueue_delivery"]

DUE = "cascade:webhooks:due"
SENDING = "cascade:webhooks:sending"
WAKE = "cascade:webhooks:wake"  # one token per queued delivery: wakes an idle sender at once
RECORD_PREFIX = "cascade:webhook:"
BACKOFF = [2, 10, 30]  # seconds before the 1st, 2nd, 3rd... retry (the last repeats)
DELIVERED_TTL = 3600  # how long a delivered record stays readable
SCAN = 1000  # due deliveries a claim looks through for destinations with room

# KEYS: the record, due, wake. ARGV: job id, url, destination, deadline, retries, ttl, now.
# A job ends once, so a second delivery for the same job is a duplicate: ignored.
_ENQUEUE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'url', ARGV[2], 'destination', ARGV[3], 'timeout', ARGV[4],
           'retries', ARGV[5], 'attempts', 0, 'status', 'queued')
redis.call('EXPIRE', KEYS[1], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1])
redis.call('RPUSH', KEYS[3], 1)
redis.call('LTRIM', KEYS[3], -1, -1)
return 1
"""

# KEYS: due, sending. ARGV: now, claim seconds, how many, per-destination limit, record prefix,
# failure ttl, how many due deliveries to look through, then pairs of a destination and the
# deliveries this sender already makes there. First the lapsed claims: due again now (the
# interrupted attempt counts), or failed when it was the last. Then the oldest due deliveries
# whose destination has room. Returns {{id, url, deadline, attempt, retries}...} and
# {{id, 'retry' or 'failed'}...} for the lapsed.
_CLAIM = """
local now, lease, want, limit = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]),
                                tonumber(ARGV[4])
local prefix, failure_ttl, scan = ARGV[5], ARGV[6], tonumber(ARGV[7])
local lapsed = {}
for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)) do
  redis.call('ZREM', KEYS[2], id)
  local record = prefix .. id
  local fields = redis.call('HMGET', record, 'attempts', 'retries')
  if fields[1] then
    local error = 'the sender stopped during the attempt'
    if tonumber(fields[1]) > tonumber(fields[2]) then
      redis.call('HSET', record, 'status', 'failed', 'error', error)
      redis.call('EXPIRE', record, failure_ttl)
      table.insert(lapsed, {id, 'failed'})
    else
      redis.call('HSET', record, 'status', 'queued', 'error', error)
      redis.call('ZADD', KEYS[1], now, id)
      table.insert(lapsed, {id, 'retry'})
    end
  end
end
local busy = {}
for i = 8, #ARGV, 2 do busy[ARGV[i]] = tonumber(ARGV[i + 1]) end
local claimed = {}
if want > 0 then
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, scan)) do
    if #claimed >= want then break end
    local record = prefix .. id
    local fields = redis.call('HMGET', record, 'url', 'destination', 'timeout', 'retries')
    if not fields[1] then
      redis.call('ZREM', KEYS[1], id)  -- its record expired
    elseif (busy[fields[2]] or 0) < limit then
      busy[fields[2]] = (busy[fields[2]] or 0) + 1
      redis.call('ZREM', KEYS[1], id)
      redis.call('ZADD', KEYS[2], now + lease, id)
      local attempt = redis.call('HINCRBY', record, 'attempts', 1)
      redis.call('HSET', record, 'status', 'sending')
      table.insert(claimed, {id, fields[1], fields[3], tostring(attempt), fields[4]})
    end
  end
end
return {claimed, lapsed}
"""

# KEYS: due, sending, the record. ARGV: job id, status, when due again (status queued), error,
# ttl. Acts only while the caller still holds the claim (else a sender took the lapsed one over).
_FINISH = """
if redis.call('ZREM', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HSET', KEYS[3], 'status', ARGV[2], 'error', ARGV[4])
if ARGV[2] == 'queued' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
else
  redis.call('EXPIRE', KEYS[3], ARGV[5])
end
return 1
"""


def record_key(job_id: str) -> str:
    return f"{RECORD_PREFIX}{job_id}"


def enqueue_delivery(connection: Redis, settings: Settings, job_id: str, url: str) -> None:
    """Queue the POST of the job's terminal event; the sender makes it."""
    connection.eval(
        _ENQUEUE,
        3,
        record_key(job_id),
        DUE,
        WAKE,
        job_id,
        url,
        destination(url),
        settings.webhook_timeout,  # each attempt's total deadline
        settings.webhook_retries,
        settings.result_ttl,
        time.time(),
    )


def backoff(retry: int) -> int:
    """Seconds to wait before retry number `retry` (1 for the first), growing."""
    return BACKOFF[min(retry, len(BACKOFF)) - 1]


@dataclass(frozen=True)
class Claim:
    """One attempt a sender holds: the delivery's job, URL and deadline, and which attempt."""

    job_id: str
    url: str
    timeout: float
    attempt: int  # 1 for the first
    retries: int

    @property
    def destination(self) -> str:
        return destination(self.url)


@dataclass(frozen=True)
class Result:
    """How an attempt ended: `sent` (the receiver answered `detail`, e.g. HTTP 204), `refused`
    or `skipped` (not sent, for good), or `failed` (a retry may mend it)."""

    outcome: Literal["sent", "refused", "skipped", "failed"]
    detail: str


class DeliveryQueue:
    """The queued deliveries in Redis: claims, renewals and outcomes (the module's docstring)."""

    def __init__(self, connection: Redis, settings: Settings):
        self.connection = connection
        self.settings = settings
        self._claim = connection.register_script(_CLAIM)
        self._finish = connection.register_script(_FINISH)

    def claim(self, want: int, busy: dict[str, int]) -> tuple[list[Claim], list[tuple[str, str]]]:
        """Up to `want` due deliveries, at most `webhook_per_destination` to a destination
        counting `busy` (this sender's own in flight); and the lapsed claims taken back."""
        pairs = [value for item in busy.items() for value in item]
        claimed, lapsed = self._claim(
            keys=[DUE, SENDING],
            args=[
                time.time(),
                self.settings.heartbeat_ttl,
                want,
                self.settings.webhook_per_destination,
                RECORD_PREFIX,
                self.settings.result_ttl,
                SCAN,
                *pairs,
            ],
        )
        claims = [
            Claim(_text(job), _text(url), float(timeout), int(attempt), int(retries))
            for job, url, timeout, attempt, retries in claimed
        ]
        return claims, [(_text(job), _text(what)) for job, what in lapsed]

    def renew(self, job_ids: list[str]) -> None:
        """Push the claims' lapse back: this sender is alive and still making them."""
        if job_ids:
            lapse = time.time() + self.settings.heartbeat_ttl
            self.connection.zadd(SENDING, dict.fromkeys(job_ids, lapse), xx=True)

    def finish(self, claim: Claim, result: Result) -> str | None:
        """Record the attempt's outcome; its status (`queued` again for a retry, `delivered`,
        `refused`, `skipped` or `failed`), or None where the claim had lapsed (another sender
        has it)."""
        retry = result.outcome == "failed" and claim.attempt <= claim.retries
        status = "queued" if retry else result.outcome.replace("sent", "delivered")
        ttl = DELIVERED_TTL if status == "delivered" else self.settings.result_ttl
        due = time.time() + backoff(claim.attempt)
        held = self._finish(
            keys=[DUE, SENDING, record_key(claim.job_id)],
            args=[claim.job_id, status, due, result.detail if status != "delivered" else "", ttl],
        )
        return status if held else None

    def status(self, job_id: str) -> dict[str, str]:
        """A delivery's record (empty once it has expired)."""
        fields = self.connection.hgetall(record_key(job_id))
        return {_text(key): _text(value) for key, value in fields.items()}


async def attempt(connection: Redis, claim: Claim, tls: ssl.SSLContext) -> Result:
    """POST the job's terminal event to the claim's URL, signed, within its total deadline."""
    try:
        async with asyncio.timeout(claim.timeout):
            return await _post(connection, claim, tls)
    except TimeoutError:
        return Result("failed", f"no answer within the {claim.timeout:g} s deadline")


async def _post(connection: Redis, claim: Claim, tls: ssl.SSLContext) -> Result:
    import httpx  # the sender's dependency; the API only queues deliveries

    settings = get_settings()  # the sender's own allow-list and secret
    events = EventLog(connection, settings.result_ttl)
    event = await asyncio.to_thread(events.last, claim.job_id)
    if event is None or not event.terminal:
        return Result("skipped", "the job has no terminal event")
    try:
        addresses = await asyncio.to_thread(
            check_destination, claim.url, settings.webhook_allow, must_resolve=True
        )
    except WebhookRefused as error:
        return Result("refused", str(error))
    body = json.dumps(event.data)
    parts = urlsplit(claim.url)
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
    request = httpx.Request(
        "POST",
        urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, "")),
        content=body,
        headers=headers,
        extensions={"sni_hostname": parts.hostname or ""},  # TLS checks the name, not the IP
    )
    # A client per attempt: a pooled connection to a pinned address must not carry another
    # host's request (its TLS session was checked against the first host's name).
    try:
        async with httpx.AsyncClient(verify=tls, follow_redirects=False) as client:
            response = await client.send(request)
    except httpx.HTTPError as error:
        return Result("failed", f"{type(error).__name__}: {error}")
    answer = f"HTTP {response.status_code}"
    retryable = response.status_code >= 500 or response.status_code == 429
    return Result("failed" if retryable else "sent", answer)


def signature(settings: Settings, message_id: str, body: str) -> dict[str, str]:
    """Standard Webhooks headers; only the id and timestamp when no secret is set."""
    from standardwebhooks.webhooks import Webhook

    timestamp = datetime.now(UTC)
    headers = {"webhook-id": message_id, "webhook-timestamp": str(int(timestamp.timestamp()))}
    if settings.webhook_secret is not None:
        secret = settings.webhook_secret.get_secret_value()
        headers["webhook-signature"] = Webhook(secret).sign(message_id, timestamp, body)
    return headers


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
