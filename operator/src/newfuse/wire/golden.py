"""Golden tasks between the operator and the agents: the run, each case's output, three scripts.

A rollout's gate asks "does the canary still answer right?", so the operator publishes the fleet's
golden cases as one run for two revisions (canary and stable) and every agent of those revisions
works through them, one case at a time, beside its live tasks. The run lives apart from the task
streams on purpose: a case must reach an agent of one particular revision, which a shared consumer
group cannot promise, and its output is evidence for the gate, never a result a caller receives.

- PUBLISH: a new run replaces the last one and its outputs in one step; publishing the same run
  again changes nothing, so the operator can publish at every reconcile (by level).
- CLAIM: an agent takes the next case its revision has no output for, unless another agent claimed
  it less than the stale bound ago (a claim older than that is an agent that died mid-case).
- RECORD: the first output of a case is kept, and only while its run is the current one.
- JUDGE_CLAIM: an `llmJudge` case's answers are graded by a model, and never by the revision being
  judged: agents of the run's `judge` revision (stable) claim each answered output in turn, ask
  their own gateway, and RECORD the judgment beside the outputs (`judge_field`), where the
  operator reads it. A failed judge call drops its claim, so it is asked again.
"""

from __future__ import annotations

from typing import Any, Final

from pydantic import BaseModel, Field

from newfuse.wire.scripts import _NOW_MS

# How often an agent looks for golden cases of its revision.
GOLDEN_POLL_SECONDS: Final = 2.0
# Replies of CLAIM_LUA when there is nothing to take.
NO_RUN: Final = "none"


def output_field(revision: str, case: str) -> str:
    """The field of one revision's output for one case, in `golden:outputs` and `golden:claims`."""
    return f"{revision}/{case}"


def judge_field(output: str) -> str:
    """The field of the judgment of the output in ``output`` (same hashes, its own names)."""
    return f"judge:{output}"


class GoldenCaseRun(BaseModel):
    """One case as the agents see it: what to run; the expectation stays with the operator."""

    name: str
    handler: str
    input: Any = None
    # An llmJudge case's criteria: what the judging agents ask their model to grade by.
    criteria: str | None = None


class GoldenRun(BaseModel):
    """The cases one gate judges, for the revisions it compares."""

    id: str
    revisions: list[str]
    cases: list[GoldenCaseRun]
    # The revision whose agents grade llmJudge cases (the stable one).
    judge: str | None = None


class GoldenOutput(BaseModel):
    """What one agent's run of one case produced: an output, or the error it raised.

    A judgment (judge_field) is one too: `ok` is the verdict, `output` the model's reason.
    """

    ok: bool
    output: Any = None
    error: str | None = None
    seconds: float = Field(default=0.0, ge=0)
    agent: str = ""
    cost: float = Field(default=0.0, ge=0, description="Model cost (tokens if unpriced).")


# KEYS: golden, golden outputs, golden claims. ARGV: run id, run JSON. Returns 1 when published.
PUBLISH_LUA: Final = """
if redis.call('HGET', KEYS[1], 'id') == ARGV[1] then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'run', ARGV[2])
return 1
"""

# Redis' clock, and `take`: every claim script's rule. ARGV[2] is the claiming agent, ARGV[3] the
# stale bound in ms: a claim younger than that belongs to a live agent; an older one, to a dead one.
CLAIM_PRELUDE: Final = (
    _NOW_MS
    + """
local function take(claims, field)
  local claim = redis.call('HGET', claims, field)
  local at = claim and tonumber(string.match(claim, '@(%d+)$')) or nil
  if at and now - at <= tonumber(ARGV[3]) then return false end
  redis.call('HSET', claims, field, ARGV[2] .. '@' .. now)
  return true
end
"""
)

# KEYS: golden, golden outputs, golden claims. ARGV: revision, agent, stale claim ms.
# Returns {run id, case index (0-based), run JSON}, or {'none'} when nothing is left to take.
CLAIM_LUA: Final = (
    CLAIM_PRELUDE
    + """
local id = redis.call('HGET', KEYS[1], 'id')
if not id then return {'none'} end
local body = redis.call('HGET', KEYS[1], 'run')
local run = cjson.decode(body)
local mine = false
for _, rev in ipairs(run.revisions) do
  if rev == ARGV[1] then mine = true end
end
if not mine then return {'none'} end
for i, case in ipairs(run.cases) do
  local field = ARGV[1] .. '/' .. case.name
  if redis.call('HEXISTS', KEYS[2], field) == 0 then
    if take(KEYS[3], field) then return {id, i - 1, body} end
  end
end
return {'none'}
"""
)

# KEYS: golden, golden outputs. ARGV: run id, field, output JSON. Returns 1 when kept.
RECORD_LUA: Final = """
if redis.call('HGET', KEYS[1], 'id') ~= ARGV[1] then return 0 end
return redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3])
"""

# KEYS: golden, golden outputs, golden claims. ARGV: revision, agent, stale claim ms.
# Returns {run id, output field, criteria, case input JSON, output JSON} of an answered llmJudge
# case to grade, or {'none'}. Only the run's judge revision grades; raised answers need no grade.
JUDGE_CLAIM_LUA: Final = (
    CLAIM_PRELUDE
    + """
local id = redis.call('HGET', KEYS[1], 'id')
if not id then return {'none'} end
local run = cjson.decode(redis.call('HGET', KEYS[1], 'run'))
if run.judge ~= ARGV[1] then return {'none'} end
for _, case in ipairs(run.cases) do
  if type(case.criteria) == 'string' then
    for _, rev in ipairs(run.revisions) do
      local field = rev .. '/' .. case.name
      local judged = 'judge:' .. field
      local out = redis.call('HGET', KEYS[2], field)
      if out and cjson.decode(out).ok == true and redis.call('HEXISTS', KEYS[2], judged) == 0 then
        if take(KEYS[3], judged) then
          return {id, field, case.criteria, cjson.encode(case.input), out}
        end
      end
    end
  end
end
return {'none'}
"""
)
