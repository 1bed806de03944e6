"""Lua scripts of human review: a task leaves its stream to wait, and comes back once decided.

- PARK: the agent that ran the task records the review, schedules its timeout and acknowledges the
  delivery, in one step: a crash either leaves the task on its stream (run again, reaching the same
  review id) or parked, never both and never neither;
- DECIDE: a reviewer's decision, or the timeout's, moves an open review to its final state and
  enqueues the task again, in one step; the state check makes the first decision the only one, so
  a timeout raced by three agents and a person is applied once. A person's decision after the
  timeout came due is refused as expired, even before an agent applied it.
Times are Redis `TIME`, like every other deadline of the task flow.
"""

from __future__ import annotations

from typing import Final

from newfuse.wire.scripts import _NOW_MS

COUNTER_REVIEWS_REQUESTED: Final = "reviewsRequested"
COUNTER_REVIEWS_ESCALATED: Final = "reviewsEscalated"
COUNTER_REVIEWS_TIMED_OUT: Final = "reviewsTimedOut"
# Counted per final state: "reviews:<state>".
COUNTER_REVIEWS_PREFIX: Final = "reviews:"
# Redis replies of DECIDE_LUA (its second element), besides a ReviewState value.
UNKNOWN: Final = "unknown"
EXPIRED: Final = "expired"
NOT_DUE: Final = "not-due"
# PARK_LUA's replies.
PARKED: Final = "parked"
LOST: Final = "lost"
DONE: Final = "done"
DECIDED: Final = "decided"  # reached again after its decision: the caller resumes from it

# KEYS: reviews, review states, review due set, review resume, source stream, counters, result
# index; KEYS[8], for a task the fleet API follows, its event stream.
# ARGV: review id, request JSON, timeout ms, "<priority>\n<task id>\n<envelope>" to resume with,
# group, entry id, consumer, task id, event stream max length.
# A review reached again (the same task and step) is not asked twice: still open, the delivery is
# just acknowledged; decided, it is left pending and 'decided' returned, so the caller resumes.
PARK_LUA: Final = (
    _NOW_MS
    + """
local owner = redis.call('XPENDING', KEYS[5], ARGV[5], ARGV[6], ARGV[6], 1)
if #owner == 0 or owner[1][2] ~= ARGV[7] then return 'lost' end
local state = redis.call('HGET', KEYS[2], ARGV[1])
if state and state ~= 'pending' and state ~= 'escalated' then return 'decided' end
redis.call('XACK', KEYS[5], ARGV[5], ARGV[6])
redis.call('XDEL', KEYS[5], ARGV[6])
if redis.call('HEXISTS', KEYS[7], ARGV[8]) == 1 then return 'done' end
if state then return 'parked' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], 'pending')
redis.call('ZADD', KEYS[3], now + tonumber(ARGV[3]), ARGV[1])
redis.call('HSET', KEYS[4], ARGV[1], ARGV[4])
redis.call('HINCRBY', KEYS[6], 'reviewsRequested', 1)
if KEYS[8] then
  redis.call('XADD', KEYS[8], 'MAXLEN', '~', ARGV[9], '*', 'task_id', ARGV[8],
    'state', 'input-required')
end
return 'parked'
"""
)

# KEYS: review states, decisions, due set, resume, reviews, review log, counters, task index,
# result index, then the four expiry sets (reviews, states, decisions, resume), then the task
# streams in the order of ARGV[9..].
# ARGV: review id, final state (or 'escalated'), decision JSON, by timeout ('1' or '0'), ttl ms of
# the decided records, review log max length, escalation ms (the next timeout, escalations only),
# reviewer, then the priority names matching the task streams.
# Returns {1, state} when decided (or escalated), else {0, why}: the state it already has, or
# 'unknown', 'expired' (a person after the due time), 'not-due' (a timeout before it).
DECIDE_LUA: Final = (
    _NOW_MS
    + """
local state = redis.call('HGET', KEYS[1], ARGV[1])
if not state then return {0, 'unknown'} end
if state ~= 'pending' and state ~= 'escalated' then return {0, state} end
local due = redis.call('ZSCORE', KEYS[3], ARGV[1])
due = due and tonumber(due)
if ARGV[4] == '1' then
  if due == nil or due > now then return {0, 'not-due'} end
elseif due ~= nil and due <= now then
  return {0, 'expired'}
end
local request = redis.call('HGET', KEYS[5], ARGV[1]) or ''
if ARGV[2] == 'escalated' then
  redis.call('HSET', KEYS[1], ARGV[1], 'escalated')
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[7]), ARGV[1])
  redis.call('HINCRBY', KEYS[7], 'reviewsEscalated', 1)
  redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[6], '*', 'review', ARGV[1],
    'state', 'escalated', 'reviewer', ARGV[8], 'decision', ARGV[3], 'request', request)
  return {1, 'escalated'}
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[3])
redis.call('ZREM', KEYS[3], ARGV[1])
local expires = now + tonumber(ARGV[5])
for i = 10, 13 do redis.call('ZADD', KEYS[i], expires, ARGV[1]) end
redis.call('HINCRBY', KEYS[7], 'reviews:' .. ARGV[2], 1)
if ARGV[4] == '1' then redis.call('HINCRBY', KEYS[7], 'reviewsTimedOut', 1) end
redis.call('XADD', KEYS[6], 'MAXLEN', '~', ARGV[6], '*', 'review', ARGV[1],
  'state', ARGV[2], 'reviewer', ARGV[8], 'decision', ARGV[3], 'request', request)
local member = redis.call('HGET', KEYS[4], ARGV[1])
redis.call('HDEL', KEYS[4], ARGV[1])
local first = member and string.find(member, '\\n', 1, true)
local second = first and string.find(member, '\\n', first + 1, true)
if second then
  local priority = string.sub(member, 1, first - 1)
  local task_id = string.sub(member, first + 1, second - 1)
  local stream = nil
  for i = 9, #ARGV do
    if ARGV[i] == priority then stream = KEYS[14 + i - 9] end
  end
  if stream and redis.call('HEXISTS', KEYS[9], task_id) == 0 then
    local id = redis.call('XADD', stream, '*', 'task_id', task_id,
      'envelope', string.sub(member, second + 1))
    redis.call('HSET', KEYS[8], task_id, id)
  end
end
return {1, ARGV[2]}
"""
)
