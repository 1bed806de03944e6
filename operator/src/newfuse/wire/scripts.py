"""Lua scripts that make the task flow's multi-key steps atomic in Redis.

Each script is one step that must not be half-done by a crash between two commands:
- SUBMIT: idempotent task ids (a resubmitted id is not enqueued twice);
- COMPLETE: store the first result of a task (with its expiry), append it to the bounded result
  stream, count it, record its dead letter if it failed for good, then acknowledge and delete the
  delivery, so a task redelivered after a crash never yields a second result or a second letter;
- REQUEUE: move a delivery back onto a stream (a hand-back on drain) or into the retry set (a retry
  with backoff), but only while this consumer still owns it and the task has no result: finished
  work never runs again;
- PROMOTE_DUE: move retries whose time has come back onto their stream;
- RENEW: refresh the idle time of the entries this consumer is working on (its liveness), and say
  which it no longer owns;
- GUARD: remember a signed message id with the entry it arrived as (the replay guard);
- DEAD_LETTER: record a message that is not a task at all, acknowledge and delete it;
- SWEEP: expire results, idempotency ids and replay guards, and trim the result stream by age;
- FETCH: read new entries, higher priorities first, in one round trip.
Times come from Redis `TIME`, one clock for every agent, whatever their own clocks say. All keys
of one fleet share a hash tag, so these also work on Redis Cluster.
"""

from __future__ import annotations

from typing import Final

_NOW_MS: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
"""

# KEYS: task index, task stream. ARGV: task id, envelope.
# Returns {1, entry id} when enqueued, {0, existing entry id} when the id was seen before.
SUBMIT_LUA: Final = """
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return {0, existing} end
local id = redis.call('XADD', KEYS[2], '*', 'task_id', ARGV[1], 'envelope', ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], id)
return {1, id}
"""

# KEYS: result index, result stream, task stream, counters, result expiry, task index expiry, DLQ.
# ARGV: task id, result envelope, group, entry id, outcome counter field, revision, ttl ms,
# result stream max length, DLQ max length, executed (1: a handler ran), then the dead letter's
# field/value pairs (none: no dead letter).
# KEYS[8], given for a task the fleet API follows (TaskPayload.events), is its event stream: a
# stored result adds the task's `ended` event there, in the same step.
# Returns 1 if this result was stored; else (still acknowledged) the result the task already had,
# which the agent checks: a forged one is then replaced (REPLACE_FORGED_LUA).
# A stored result expires after the ttl, and so does the task id's idempotency record.
COMPLETE_LUA: Final = (
    _NOW_MS
    + """
-- An empty envelope only acknowledges (finished work delivered again): never store it.
local stored = 0
if ARGV[2] ~= '' then stored = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) end
if stored == 1 then
  local expires = now + tonumber(ARGV[7])
  redis.call('ZADD', KEYS[5], expires, ARGV[1])
  redis.call('ZADD', KEYS[6], expires, ARGV[1])
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[8], '*', 'task_id', ARGV[1], 'envelope', ARGV[2])
  redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
  redis.call('HINCRBY', KEYS[4], 'rev:' .. ARGV[6] .. ':' .. ARGV[5], 1)
  if KEYS[8] then
    redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[8], '*', 'task_id', ARGV[1], 'state', 'ended')
  end
elseif ARGV[10] == '1' then
  redis.call('HINCRBY', KEYS[4], 'duplicates', 1)
end
-- Every refused or failed delivery leaves its letter, even when its task id already has a
-- result (a second message claiming a finished id is worth seeing); the ack below makes it once.
if #ARGV > 10 then
  local fields = {}
  for i = 11, #ARGV do fields[#fields + 1] = ARGV[i] end
  redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[9], '*', unpack(fields))
end
redis.call('XACK', KEYS[3], ARGV[3], ARGV[4])
redis.call('XDEL', KEYS[3], ARGV[4])
if stored == 1 or ARGV[2] == '' then return stored end
return redis.call('HGET', KEYS[1], ARGV[1])
"""
)

# KEYS: result index, result stream, counters, result expiry, task index expiry.
# ARGV: task id, the forged envelope found, the agent's envelope, outcome counter field, revision,
# ttl ms, result stream max length, executed (1: COMPLETE counted a duplicate to take back).
# Replaces the index entry only if it still holds exactly what the agent checked and refused.
# Lua cannot verify a signature, so the first writer of a task id wins in COMPLETE; anyone who can
# write the fleet's keys could then pre-empt the real result with an unsigned one.
REPLACE_FORGED_LUA: Final = (
    _NOW_MS
    + """
if redis.call('HGET', KEYS[1], ARGV[1]) ~= ARGV[2] then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[3])
local expires = now + tonumber(ARGV[6])
redis.call('ZADD', KEYS[4], expires, ARGV[1])
redis.call('ZADD', KEYS[5], expires, ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[7], '*', 'task_id', ARGV[1], 'envelope', ARGV[3])
redis.call('HINCRBY', KEYS[3], ARGV[4], 1)
redis.call('HINCRBY', KEYS[3], 'rev:' .. ARGV[5] .. ':' .. ARGV[4], 1)
if ARGV[8] == '1' then redis.call('HINCRBY', KEYS[3], 'duplicates', -1) end
redis.call('HINCRBY', KEYS[3], 'forgedResults', 1)
return 1
"""
)

# KEYS: result index, result stream, counters, result expiry, task index expiry, task stream,
# A2A event stream.
# ARGV: task id, result envelope (FAILED, reason canceled), ttl ms, result stream max length,
# the task's entry id. Stores the cancellation as the task's result unless it has one (the first
# result wins, so a finished task stays finished) and deletes the entry from its stream, so an agent
# that has not taken it never runs it. Returns 1 if cancelled, else the result the task already had.
CANCEL_LUA: Final = (
    _NOW_MS
    + """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 0 then
  return redis.call('HGET', KEYS[1], ARGV[1])
end
local expires = now + tonumber(ARGV[3])
redis.call('ZADD', KEYS[4], expires, ARGV[1])
redis.call('ZADD', KEYS[5], expires, ARGV[1])
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*', 'task_id', ARGV[1], 'envelope', ARGV[2])
redis.call('HINCRBY', KEYS[3], 'tasksCanceled', 1)
redis.call('XDEL', KEYS[6], ARGV[5])
redis.call('XADD', KEYS[7], 'MAXLEN', '~', ARGV[4], '*', 'task_id', ARGV[1], 'state', 'ended')
return 1
"""
)

# KEYS: A2A record hash, its expiry set, A2A event stream, task index, task stream.
# ARGV: task id, record, record expiry (Redis ms), event stream max length, task envelope.
# The fleet API's submission, in one step: keep the first record of a task id and, only then,
# enqueue the task (unless its id was seen: SUBMIT_LUA's rule) and add its `submitted` event.
# Two gateways sending the same message thus make one task and one event, and no agent can start
# the task before its `submitted` event exists. Returns the record kept.
A2A_SUBMIT_LUA: Final = """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  if not redis.call('HGET', KEYS[4], ARGV[1]) then
    local id = redis.call('XADD', KEYS[5], '*', 'task_id', ARGV[1], 'envelope', ARGV[5])
    redis.call('HSET', KEYS[4], ARGV[1], id)
  end
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[4], '*', 'task_id', ARGV[1], 'state', 'submitted')
end
return redis.call('HGET', KEYS[1], ARGV[1])
"""

# KEYS: source stream, target stream, task index, result index, retry set.
# ARGV: group, entry id, consumer, task id, new envelope, delay ms (negative: enqueue now),
# target priority. Returns 'done' (the task has a result: dropped), 'lost' (another consumer owns
# the delivery now: left alone), 'retry' (scheduled) or the new entry id.
REQUEUE_LUA: Final = (
    _NOW_MS
    + """
local owner = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[2], ARGV[2], 1)
if #owner == 0 or owner[1][2] ~= ARGV[3] then return 'lost' end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('HEXISTS', KEYS[4], ARGV[4]) == 1 then return 'done' end
local delay = tonumber(ARGV[6])
if delay >= 0 then
  redis.call('ZADD', KEYS[5], now + delay, ARGV[7] .. '\\n' .. ARGV[4] .. '\\n' .. ARGV[5])
  redis.call('HSET', KEYS[3], ARGV[4], 'retry')
  return 'retry'
end
local id = redis.call('XADD', KEYS[2], '*', 'task_id', ARGV[4], 'envelope', ARGV[5])
redis.call('HSET', KEYS[3], ARGV[4], id)
return id
"""
)

# KEYS: retry set, task index, result index, then the task streams in the order of ARGV[2..].
# ARGV: most to move, then the priority names matching KEYS[4..]. Returns how many moved.
PROMOTE_DUE_LUA: Final = (
    _NOW_MS
    + """
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
local streams = {}
for i = 2, #ARGV do streams[ARGV[i]] = KEYS[i + 2] end
for _, member in ipairs(due) do
  redis.call('ZREM', KEYS[1], member)
  local first = string.find(member, '\\n', 1, true)
  local second = first and string.find(member, '\\n', first + 1, true)
  if second then
    local priority = string.sub(member, 1, first - 1)
    local task_id = string.sub(member, first + 1, second - 1)
    local stream = streams[priority]
    if stream and redis.call('HEXISTS', KEYS[3], task_id) == 0 then
      local id = redis.call('XADD', stream, '*', 'task_id', task_id,
        'envelope', string.sub(member, second + 1))
      redis.call('HSET', KEYS[2], task_id, id)
    end
  end
end
return #due
"""
)

# KEYS: one task stream. ARGV: group, consumer, entry ids. XCLAIM ... JUSTID resets an entry's
# idle time without counting a delivery. Returns the ids another consumer owns now (an entry no
# longer pending at all has just been finished, by this consumer or another: not reported).
RENEW_LUA: Final = """
local lost = {}
for i = 3, #ARGV do
  local owner = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if #owner == 1 then
    if owner[1][2] == ARGV[2] then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
    else
      lost[#lost + 1] = ARGV[i]
    end
  end
end
return lost
"""

# KEYS: replay-guard hash, its expiry set. ARGV: message id, entry id, ttl ms.
# Returns the entry id the message first arrived as (ARGV[2] itself the first time).
GUARD_LUA: Final = (
    _NOW_MS
    + """
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2]) == 1 then
  redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
  return ARGV[2]
end
return redis.call('HGET', KEYS[1], ARGV[1])
"""
)

# KEYS: dead-letter stream, source stream, counters. ARGV: group, entry id, DLQ max length, the
# refusing agent's revision, then the field/value pairs of the dead letter. The refusal counts
# against the revision: a canary that refuses the work its fleet is sent fails its gate.
DEAD_LETTER_LUA: Final = """
local fields = {}
for i = 5, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', unpack(fields))
redis.call('XACK', KEYS[2], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[2], ARGV[2])
redis.call('HINCRBY', KEYS[3], 'rev:' .. ARGV[4] .. ':tasksRejected', 1)
return id
"""

# KEYS: result stream, then (hash, its expiry set) pairs. ARGV: result ttl ms, most fields per
# hash. Returns how many fields expired.
SWEEP_LUA: Final = (
    _NOW_MS
    + """
local expired = 0
for i = 2, #KEYS, 2 do
  local fields = redis.call('ZRANGEBYSCORE', KEYS[i + 1], '-inf', now,
    'LIMIT', 0, tonumber(ARGV[2]))
  if #fields > 0 then
    redis.call('HDEL', KEYS[i], unpack(fields))
    redis.call('ZREM', KEYS[i + 1], unpack(fields))
    expired = expired + #fields
  end
end
-- Exact, not '~': an approximate trim keeps up to a node of expired results for ever when idle.
redis.call('XTRIM', KEYS[1], 'MINID', tostring(now - tonumber(ARGV[1])))
return expired
"""
)

# KEYS: the task streams, highest priority first. ARGV: group, consumer, count.
# Up to count new entries, read from the first streams that have any: the non-blocking half of a
# fetch in one round trip instead of one per priority.
# Returns {{stream, {{id, {field, value, ...}}, ...}}, ...}.
FETCH_LUA: Final = """
local want = tonumber(ARGV[3])
local out = {}
for i = 1, #KEYS do
  if want <= 0 then break end
  local reply = redis.call(
    'XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', want, 'STREAMS', KEYS[i], '>')
  if reply then
    local entries = reply[1][2]
    want = want - #entries
    table.insert(out, {KEYS[i], entries})
  end
end
return out
"""

COUNTER_COMPLETED: Final = "tasksCompleted"
COUNTER_FAILED: Final = "tasksFailed"
COUNTER_REJECTED: Final = "tasksRejected"  # per revision only: refused and dead-lettered
COUNTER_DUPLICATES: Final = "duplicates"
COUNTER_CANCELED: Final = "tasksCanceled"  # by the fleet API's CancelTask (CANCEL_LUA)
