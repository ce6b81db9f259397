"""The stage queues as workers pop them: into RQ's intermediate list, however many they serve."""

from __future__ import annotations

import time

from redis import Redis
from rq.exceptions import DequeueTimeout
from rq.job import Job
from rq.queue import Queue
from rq.serializers import JSONSerializer
from rq.utils import as_text

from jobs.queues import queue_name

# How often an idle worker serving several queues looks at them (LMOVE cannot block on several).
POLL_INTERVAL = 0.1


class StageQueue(Queue):
    """RQ's queue, popped the safe way however many queues a worker serves.

    RQ pops from several queues with BLPOP, which takes the job id out of Redis before the worker
    has registered it as started: a worker frozen (SIGSTOP) or killed in between loses that
    stage job for good, and its cascade job stays `queued` forever. From a single queue RQ uses
    LMOVE into the queue's intermediate list instead, which its maintenance re-queues when the
    job never started; this does the same for several queues, looking at each in order."""

    @classmethod
    def dequeue_any(  # type: ignore[override]
        cls,
        queues: list[Queue],
        timeout: int | None,
        connection: Redis | None = None,
        job_class: type[Job] | None = None,
        serializer: object = None,
        death_penalty_class: object = None,
    ) -> tuple[Job, Queue] | None:
        queues = list(queues)
        if len(queues) == 1:
            return super().dequeue_any(
                queues, timeout, connection, job_class, serializer, death_penalty_class
            )
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            for queue in queues:
                result = cls.lmove(connection, queue.key, None)  # non-blocking, into intermediate
                if result is None:
                    continue
                queue_key, job_id = map(as_text, result)
                fetched = cls._fetch_dequeued_job(
                    connection,
                    queue_key,
                    job_id,
                    job_class=job_class,
                    serializer=serializer,
                    death_penalty_class=death_penalty_class,
                )
                if fetched is not None:
                    return fetched
            if deadline is None:
                return None
            if time.monotonic() >= deadline:
                raise DequeueTimeout(timeout, [queue.key for queue in queues])
            time.sleep(POLL_INTERVAL)


def worker_queue(connection: Redis, stage: str) -> StageQueue:
    """The stage's queue for a worker to pop (JSON-serialized, as `jobs.queues.stage_queue`)."""
    return StageQueue(queue_name(stage), connection=connection, serializer=JSONSerializer)
