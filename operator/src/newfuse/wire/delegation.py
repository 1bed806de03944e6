"""Delegation: a task that waits for a task on another fleet, and the wait-for graph it makes.

A handler calls `await context.delegate(fleet, handler, input)`. Its run ends there (the replay
model of human review): the agent submits the child task to the other fleet, records the wait and
takes the parent off its stream, holding no slot. When the child ends, whoever stored its result
puts the parent back on its stream (RESUME_WAIT_LUA), and the parent's handler runs again; this
time `delegate` returns the child's output (or raises its failure).

Each fleet's open waits are its edges of the wait-for graph: parent task -> child task. A cycle
(A's task waits on B's, which waits on A's: idempotent task ids make it possible) never ends by
itself; the agents' detector finds it and fails its youngest waiter with reason `deadlock`, naming
the cycle. The keys are in `newfuse.wire.keys.FleetKeys` (`waits`, `waits_open`, `waits_resume`,
`deadlocks`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

# A chain deeper than this is refused: a handler that delegates to itself without end is a bug,
# not a workload.
MAX_DELEGATION_DEPTH: Final = 8
# A child task its fleet has never heard of (no id, no result) for this long is a stalled wait.
STALL_SECONDS: Final = 60.0
# Most children one delegation step waits on (a workflow level, a fan-out).
MAX_CHILDREN: Final = 256
COUNTER_DEADLOCKS: Final = "deadlocks"
COUNTER_DELEGATIONS: Final = "delegations"
DEADLOCK_LOG_MAX: Final = 10_000


class TaskRef(BaseModel):
    """A task of some fleet: a node of the wait-for graph."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    namespace: str = Field(min_length=1, max_length=63)
    fleet: str = Field(min_length=1, max_length=63)
    task_id: str = Field(min_length=1, max_length=128)

    def __str__(self) -> str:
        return f"{self.namespace}/{self.fleet}/{self.task_id}"


class Delegated(BaseModel):
    """What a delegated task came to, as its parent's handler gets it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    child: TaskRef
    succeeded: bool
    output: Any = None
    error: str | None = None


class Waiting(BaseModel):
    """What a parked task waits on: ``need`` of its ``children`` must end before it resumes."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    step: int = Field(ge=0)
    children: list[TaskRef] = Field(min_length=1, max_length=MAX_CHILDREN)
    need: int = Field(ge=1)

    @property
    def marker(self) -> str:
        """This wait's name among the task's successive ones: a late notice resumes no other."""
        return f"step-{self.step}"


class WaitRecord(BaseModel):
    """A parent task's open wait: one per waiting task (it waits on one step at a time)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task_id: str
    waiting: Waiting
    depth: int = Field(ge=0)
    created_at: dt.datetime


# KEYS: waits, open waits, resume, source stream, result index, counters.
# ARGV: task id, wait record, "<priority>\n<marker>\n<envelope>" to resume with (the marker
# names the wait: Waiting.marker), group, entry id, consumer, when the wait began (Redis ms, with
# a fraction: read before the children were submitted, so a child's wait never begins before its
# parent's, and the youngest waiter of a cycle is the one that closed it).
# Returns 'lost' (another consumer owns the delivery), 'done' (the task has a result) or 'parked'.
PARK_WAIT_LUA: Final = """
local owner = redis.call('XPENDING', KEYS[4], ARGV[4], ARGV[5], ARGV[5], 1)
if #owner == 0 or owner[1][2] ~= ARGV[6] then return 'lost' end
redis.call('XACK', KEYS[4], ARGV[4], ARGV[5])
redis.call('XDEL', KEYS[4], ARGV[5])
if redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then return 'done' end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[7], ARGV[1])
redis.call('HINCRBY', KEYS[6], 'delegations', 1)
return 'parked'
"""

# KEYS: waits, open waits, resume, task index, result index, then the task streams in the order
# of ARGV[4..]. ARGV: task id, the wait it must be in (its marker; "" for any), an envelope to
# resume with instead of the parked one ("" for the parked one: a deadlock victim gets its own),
# then the priority names.
# Closes the wait and puts the task back on its stream, once: returns 1, or 0 if the task was not
# waiting (in that wait).
RESUME_WAIT_LUA: Final = """
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
local member = redis.call('HGET', KEYS[3], ARGV[1]) or ''
local first = string.find(member, '\\n', 1, true)
local second = first and string.find(member, '\\n', first + 1, true)
if ARGV[2] ~= '' and (not second or string.sub(member, first + 1, second - 1) ~= ARGV[2]) then
  return 0
end
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
if not second or redis.call('HEXISTS', KEYS[5], ARGV[1]) == 1 then return 1 end
local priority = string.sub(member, 1, first - 1)
local envelope = string.sub(member, second + 1)
if ARGV[3] ~= '' then envelope = ARGV[3] end
local stream = nil
for i = 4, #ARGV do
  if ARGV[i] == priority then stream = KEYS[6 + i - 4] end
end
if stream then
  local id = redis.call('XADD', stream, '*', 'task_id', ARGV[1], 'envelope', envelope)
  redis.call('HSET', KEYS[4], ARGV[1], id)
end
return 1
"""
