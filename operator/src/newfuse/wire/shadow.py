"""Shadow tasks between the operator and the agents: live work copied to the canary, kept apart.

During a rollout step the operator publishes a shadow run naming the canary and stable revisions
and a sample share. A stable agent that finished a sampled live task offers it (input, output,
time, cost) as a case; canary agents run the copies beside their own work and record their answers
in a hash of their own. Nothing of a copy reaches the task's result, its stream or its events: the
caller only ever gets the stable agent's result. The operator compares the two answers
(newfuse.core.shadow), or, when the run has `judge` criteria, the stable agents' model grades each
canary answer against the stable one first (JUDGE_CLAIM_LUA; the grade goes to the outputs hash
under newfuse.wire.golden.judge_field, as golden grades do).
"""

from __future__ import annotations

import hashlib
from typing import Any, Final

from pydantic import BaseModel, Field

from newfuse.wire.golden import CLAIM_PRELUDE


class ShadowConfig(BaseModel):
    """One step's shadow run: which revision copies go to, from which, and how many."""

    id: str
    canary: str
    stable: str
    percent: float = Field(ge=0, le=100)
    max_samples: int = Field(ge=1)
    # ShadowSpec.judge: the criteria stable agents grade agreement by (None: JSON equality).
    judge: str | None = None

    def sampled(self, task_id: str) -> bool:
        """Whether a live task is copied: by a hash of its id, so every agent agrees."""
        digest = hashlib.sha256(f"shadow:{task_id}".encode()).digest()
        return int.from_bytes(digest[:4], "big") % 10000 < self.percent * 100


class ShadowCase(BaseModel):
    """A live task as the stable revision answered it."""

    handler: str
    input: Any = None
    output: Any = None
    seconds: float = 0.0
    cost: float = 0.0


# KEYS: shadow, cases, outputs, claims. ARGV: run id, ShadowConfig JSON. Returns 1 if new.
PUBLISH_LUA: Final = """
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then return 0 end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'run', ARGV[2])
return 1
"""

# KEYS: shadow, cases. ARGV: run id, task id, ShadowCase JSON, max samples. Returns 1 if kept.
OFFER_LUA: Final = """
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
if redis.call('HLEN', KEYS[2]) >= tonumber(ARGV[4]) then return 0 end
return redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3])
"""

# KEYS: shadow, cases, outputs, claims. ARGV: revision, agent, stale claim ms.
# Returns {run id, task id, ShadowCase JSON}, or {} when there is nothing for this revision.
CLAIM_LUA: Final = (
    CLAIM_PRELUDE
    + """
local id = redis.call('HGET', KEYS[1], 'id')
if not id then return {} end
local run = cjson.decode(redis.call('HGET', KEYS[1], 'run'))
if run.canary ~= ARGV[1] then return {} end
local cases = redis.call('HGETALL', KEYS[2])
for i = 1, #cases, 2 do
  local task = cases[i]
  if redis.call('HEXISTS', KEYS[3], task) == 0 then
    if take(KEYS[4], task) then return {id, task, cases[i + 1]} end
  end
end
return {}
"""
)

# KEYS: shadow, cases, outputs, claims. ARGV: revision, agent, stale claim ms.
# Returns {run id, task id, criteria, ShadowCase JSON, canary output JSON} of an answered copy to
# grade, or {} when there is none for this revision (only the run's stable revision grades).
JUDGE_CLAIM_LUA: Final = (
    CLAIM_PRELUDE
    + """
local id = redis.call('HGET', KEYS[1], 'id')
if not id then return {} end
local run = cjson.decode(redis.call('HGET', KEYS[1], 'run'))
if run.stable ~= ARGV[1] or type(run.judge) ~= 'string' then return {} end
local outputs = redis.call('HGETALL', KEYS[3])
for i = 1, #outputs, 2 do
  local task = outputs[i]
  local judged = 'judge:' .. task
  if string.sub(task, 1, 6) ~= 'judge:' and cjson.decode(outputs[i + 1]).ok == true
      and redis.call('HEXISTS', KEYS[3], judged) == 0 then
    local case = redis.call('HGET', KEYS[2], task)
    if case and take(KEYS[4], judged) then
      return {id, task, run.judge, case, outputs[i + 1]}
    end
  end
end
return {}
"""
)
