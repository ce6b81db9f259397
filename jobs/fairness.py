"""The order of a stage's queue: priority first, then a fair share between API keys.

Each stage keeps one RQ queue (a Redis list its workers pop from the front). A stage job is
queued by RQ, then moved by one Lua script to its place: after every queued job of a higher
priority, and, within its priority, by round: a key's n-th job waiting in that queue is in
round n, placed after every job of round n and before round n + 1. So the keys take turns:
queued A1 A2 B1 C1 C2 A3 runs as A1 B1 C1 A2 C2 A3, and a key's 20 waiting jobs do not hold
back another key's first. Jobs without a key (a service with no API keys) are all in round 0:
first come, first served within their priority, as a plain queue.

Each queued job's place is a field of one hash per stage (`rank|round|owner`); the script
drops the fields of jobs no longer queued once they outnumber the queued ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from redis import Redis

Priority = Literal["high", "normal", "low"]
PRIORITIES: tuple[Priority, ...] = ("high", "normal", "low")  # served in this order
RANK = {priority: rank for rank, priority in enumerate(PRIORITIES)}


def priority_of(request: Mapping[str, object]) -> str:
    """A job's priority, as its request gave it (requests made before priorities: normal)."""
    return str(request.get("priority", "normal"))


def order_key(queue: str) -> str:
    return f"cascade:order:{queue}"


# KEYS: the queue's list, its order hash. ARGV: the RQ job id, its rank, its owner ("": none).
# The job is in the list (RQ pushed it); it is moved to its place. Returns its round, or -1
# when a worker had already taken it.
PLACE = """
local list, order = KEYS[1], KEYS[2]
local id, rank, owner = ARGV[1], tonumber(ARGV[2]), ARGV[3]
local queued = redis.call('LRANGE', list, 0, -1)
local places = {}
for index, other in ipairs(queued) do
  local entry = other ~= id and redis.call('HGET', order, other)
  if entry then
    local r, n, o = string.match(entry, '^(%d+)|(%d+)|(.*)$')
    places[index] = {tonumber(r), tonumber(n), o}
  end
end
local round = 0
if owner ~= '' then
  round = 1
  for _, place in pairs(places) do
    if place[3] == owner and place[1] == rank and place[2] >= round then
      round = place[2] + 1
    end
  end
end
if redis.call('LREM', list, 0, id) == 0 then
  redis.call('HDEL', order, id)
  return -1
end
redis.call('HSET', order, id, rank .. '|' .. round .. '|' .. owner)
local placed = false
for index, other in ipairs(queued) do
  local place = places[index]
  if place and (place[1] > rank or (place[1] == rank and place[2] > round)) then
    redis.call('LINSERT', list, 'BEFORE', other, id)
    placed = true
    break
  end
end
if not placed then
  redis.call('RPUSH', list, id)
end
if redis.call('HLEN', order) > 2 * #queued + 64 then
  local present = {[id] = true}
  for _, other in ipairs(queued) do
    present[other] = true
  end
  for _, field in ipairs(redis.call('HKEYS', order)) do
    if not present[field] then
      redis.call('HDEL', order, field)
    end
  end
end
return round
"""


def place(
    connection: Redis, queue_key: str, queue: str, rq_id: str, owner: str, priority: str
) -> int:
    """Move a just-queued stage job to its place (module doc); its round, -1 if already taken."""
    script = connection.register_script(PLACE)
    return int(script(keys=[queue_key, order_key(queue)], args=[rq_id, RANK[priority], owner]))
