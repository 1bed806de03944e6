"""Lua scripts that make the task flow's multi-key steps atomic in Redis.

Each script is one step that must not be half-done by a crash between two commands:
- SUBMIT: idempotent task ids (a resubmitted id is not enqueued twice);
- COMPLETE: store the first result of a task, append it to the result stream, count it, and
  acknowledge the task, so a task redelivered after a crash never yields a second result;
- REQUEUE: acknowledge a delivery and enqueue the task again (a retry, or a hand-back on drain);
- DEAD_LETTER: record a dead letter and, optionally, acknowledge the delivery.
All keys of one fleet share a hash tag, so these also work on Redis Cluster.
"""

from __future__ import annotations

from typing import Final

# KEYS: task index, task stream. ARGV: task id, envelope.
# Returns {1, entry id} when enqueued, {0, existing entry id} when the id was seen before.
SUBMIT_LUA: Final = """
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return {0, existing} end
local id = redis.call('XADD', KEYS[2], '*', 'task_id', ARGV[1], 'envelope', ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], id)
return {1, id}
"""

# KEYS: result index, result stream, task stream, counters.
# ARGV: task id, result envelope, group, entry id, outcome counter field, revision.
# Returns 1 if this result was stored, 0 if the task already had one (still acknowledged).
COMPLETE_LUA: Final = """
local stored = redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[2])
if stored == 1 then
  redis.call('XADD', KEYS[2], '*', 'task_id', ARGV[1], 'envelope', ARGV[2])
  redis.call('HINCRBY', KEYS[4], ARGV[5], 1)
  redis.call('HINCRBY', KEYS[4], 'rev:' .. ARGV[6] .. ':' .. ARGV[5], 1)
end
redis.call('XACK', KEYS[3], ARGV[3], ARGV[4])
return stored
"""

# KEYS: source task stream, target task stream, task index.
# ARGV: group, entry id, task id, new envelope. Returns the new entry id.
REQUEUE_LUA: Final = """
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
local id = redis.call('XADD', KEYS[2], '*', 'task_id', ARGV[3], 'envelope', ARGV[4])
redis.call('HSET', KEYS[3], ARGV[3], id)
return id
"""

# KEYS: dead-letter stream, source stream. ARGV: group, entry id (empty: do not ack), then
# field/value pairs of the dead letter.
DEAD_LETTER_LUA: Final = """
local fields = {}
for i = 3, #ARGV do fields[#fields + 1] = ARGV[i] end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
if ARGV[2] ~= '' then redis.call('XACK', KEYS[2], ARGV[1], ARGV[2]) end
return id
"""

COUNTER_COMPLETED: Final = "tasksCompleted"
COUNTER_FAILED: Final = "tasksFailed"
