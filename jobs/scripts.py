"""The Lua scripts behind a job's state machine (`jobs.lifecycle`): each one reads and writes a
job's record in one atomic step, so a cancel racing a finishing stage, or an attempt whose lease
was handed on, has one outcome. Their status guards are built from `jobs.status`, the one place
the status vocabulary is written.

KEYS and ARGV are described above each script; `Jobs` registers them once per connection.
"""

from __future__ import annotations

from jobs.status import WAITING, JobStatus, StageStatus, lua_ended, lua_list

# Lua: whether the record's status (a local `status`, false when the record is gone) has ended.
ENDED = lua_ended("status")

UPDATE_IF_ACTIVE = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if {ENDED} then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
"""

# KEYS: the record. ARGV: the stage, the time, then field/value pairs. Starts an attempt unless
# the job has ended or the stage already succeeded: its number (the lease), else 0.
START_STAGE = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if ({ENDED}) or redis.call('HGET', KEYS[1], ARGV[1] .. '.status') == '{StageStatus.SUCCEEDED}' then
  return 0
end
redis.call('HSETNX', KEYS[1], 'started_at', ARGV[2])
local attempt = redis.call('HINCRBY', KEYS[1], ARGV[1] .. '.attempts', 1)
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return attempt
"""

# KEYS: the record. ARGV: the lease field, the lease ("" for none), "1" to write only while the
# job is active, then field/value pairs. 1 when written; 0 when the record is gone, the lease is
# another attempt's, or (when asked) the job has ended.
WRITE_FENCED = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if not status then
  return 0
end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
if ARGV[3] == '1' and ({ENDED}) then
  return 0
end
redis.call('HSET', KEYS[1], unpack(ARGV, 4))
return 1
"""

# KEYS: the record. ARGV: the lease field, the lease ("" for none), then field/value pairs.
# 0: written; 1: the job has ended (canceled: stop), nothing written (its view stays as it
# ended); 2: nothing written, the record is gone or another attempt holds the stage.
PROGRESS = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if (not status) or (ARGV[2] ~= '' and redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2]) then
  return 2
end
if {ENDED} then
  return 1
end
redis.call('HSET', KEYS[1], unpack(ARGV, 3))
return 0
"""

# KEYS: the record, the tensor. ARGV: the lease field, the lease ("" for none), data, ttl.
# Nothing is stored for a job that has ended (its end dropped the hand-off tensors); an upload
# is stored before its record is made.
PUT_FENCED = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if status and ({ENDED}) then
  return 0
end
if ARGV[2] ~= '' and redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then
  return 0
end
redis.call('SET', KEYS[2], ARGV[3], 'EX', ARGV[4])
return 1
"""

# KEYS: the record. ARGV: the job's end status, the time, its error, the stage that failed it
# ("" for none) and this process's lease on it ("" for none), the record's ttl, that stage's
# error, then the job's stage names. Ends the job once: 0 when it had already ended, is gone, or
# another attempt holds the failing stage. The failing stage ends failed, a running one as the
# job did (failed, or canceled), and on a cancel every stage that never started ends canceled.
END = f"""
local status = redis.call('HGET', KEYS[1], 'status')
if {ENDED} then
  return 0
end
local culprit = ARGV[4]
if ARGV[5] ~= '' and redis.call('HGET', KEYS[1], culprit .. '.attempts') ~= ARGV[5] then
  return 0
end
redis.call('HSET', KEYS[1], 'status', ARGV[1], 'ended_at', ARGV[2], 'error', ARGV[3])
local waiting = {lua_list(WAITING)}
for index = 8, #ARGV do
  local name = ARGV[index]
  local stage = redis.call('HGET', KEYS[1], name .. '.status')
  local ended = false
  if name == culprit then
    ended = '{StageStatus.FAILED}'
    redis.call('HSET', KEYS[1], name .. '.error', ARGV[7])
  elseif stage == '{StageStatus.RUNNING}' then
    ended = ARGV[1] == '{JobStatus.FAILED}' and '{StageStatus.FAILED}' or '{StageStatus.CANCELED}'
  elseif ARGV[1] == '{JobStatus.CANCELED}' and waiting[stage] then
    ended = '{StageStatus.CANCELED}'
  end
  if ended then
    redis.call('HSET', KEYS[1], name .. '.status', ended, name .. '.ended_at', ARGV[2])
  end
end
redis.call('EXPIRE', KEYS[1], ARGV[6])
return 1
"""
