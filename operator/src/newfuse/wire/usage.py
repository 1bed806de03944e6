"""What model calls cost, in Redis: the agents count it, submissions check the hard budget.

An agent adds each task's tokens and cost (the gateway's `usage` fields, priced by the fleet's
price table) to the fleet's usage hash: per revision, for the rollout's cost gate, and per UTC day
of Redis' clock, for budgets. The operator mirrors spec.budget's hard limits into the budget hash,
and every submission of a new task from outside the fleet checks them in the same Lua step that
enqueues it: a hard budget holds at the moment it is reached, not at the next reconcile.
"""

from __future__ import annotations

from typing import Final

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from newfuse.wire.protocol import stamp_lua
from newfuse.wire.scripts import _NOW_MS, A2A_SUBMIT_LUA

SECONDS_PER_DAY: Final = 86400
HARD_COST: Final = "hardCost"
HARD_TOKENS: Final = "hardTokens"
# The error a refused submission replies with: "NEWFUSE_BUDGET <cost> <hard cost|-> <tokens> ...".
BUDGET_ERROR: Final = "NEWFUSE_BUDGET"


def revision_field(revision: str, unit: str) -> str:
    """The usage field of one revision: unit is "tokens", "cost" or "tasks" (tasks with usage)."""
    return f"rev:{revision}:{unit}"


def day_field(day: int, unit: str) -> str:
    """The usage field of one UTC day (days since the epoch, by Redis' clock)."""
    return f"day:{day}:{unit}"


class Price(BaseModel):
    """What a model's tokens cost (spec.gateway.prices, as the agent reads it from its env)."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    model: str = Field(description='A model name, or "*" for any model not listed.')
    input_per_million_tokens: float = Field(default=0.0, ge=0, alias="inputPerMillionTokens")
    output_per_million_tokens: float = Field(default=0.0, ge=0, alias="outputPerMillionTokens")


PRICES: Final = TypeAdapter(list[Price])


def cost_of(prices: list[Price], model: str | None, prompt: int, completion: int) -> float:
    """The cost of one model call by the price table (0 for a model it does not price)."""
    by_model = {p.model: p for p in prices}
    price = by_model.get(model or "") or by_model.get("*")
    if price is None:
        return 0.0
    return (
        prompt * price.input_per_million_tokens + completion * price.output_per_million_tokens
    ) / 1e6


# KEYS: usage. ARGV: revision, tokens, cost. Returns the day it was counted on.
USAGE_LUA: Final = (
    _NOW_MS
    + """
local day = math.floor(now / 86400000)
local rev = 'rev:' .. ARGV[1] .. ':'
redis.call('HINCRBY', KEYS[1], rev .. 'tokens', ARGV[2])
redis.call('HINCRBYFLOAT', KEYS[1], rev .. 'cost', ARGV[3])
redis.call('HINCRBY', KEYS[1], rev .. 'tasks', 1)
redis.call('HINCRBY', KEYS[1], 'day:' .. day .. ':tokens', ARGV[2])
redis.call('HINCRBYFLOAT', KEYS[1], 'day:' .. day .. ':cost', ARGV[3])
return day
"""
)


def budget_guard(budget: int, usage: int) -> str:
    """Lua refusing the script with a BUDGET_ERROR once today's spend reaches a hard limit.

    ``budget`` and ``usage`` are the KEYS indices of the budget and usage hashes.
    """
    return f"""
local limits = redis.call('HMGET', KEYS[{budget}], '{HARD_COST}', '{HARD_TOKENS}')
if limits[1] or limits[2] then
  local clock = redis.call('TIME')
  local day = math.floor(tonumber(clock[1]) / {SECONDS_PER_DAY})
  local spent = redis.call('HMGET', KEYS[{usage}], 'day:' .. day .. ':cost',
    'day:' .. day .. ':tokens')
  local cost, tokens = tonumber(spent[1] or '0'), tonumber(spent[2] or '0')
  if (limits[1] and cost >= tonumber(limits[1])) or (limits[2] and tokens >= tonumber(limits[2]))
  then
    return redis.error_reply('{BUDGET_ERROR} ' .. cost .. ' ' .. (limits[1] or '-') .. ' ' ..
      tokens .. ' ' .. (limits[2] or '-'))
  end
end
"""


# KEYS: task index, task stream, budget, usage, protocol set. ARGV: task id, envelope, its major.
# SUBMIT_LUA with the hard budget checked for a task id not seen before, and the task's protocol
# major stamped as seen (newfuse.wire.protocol), resubmissions too: they are traffic of that major.
SUBMIT_BUDGETED_LUA: Final = (
    stamp_lua(5, 3)
    + """
local existing = redis.call('HGET', KEYS[1], ARGV[1])
if existing then return {0, existing} end
"""
    + budget_guard(3, 4)
    + """
local id = redis.call('XADD', KEYS[2], '*', 'task_id', ARGV[1], 'envelope', ARGV[2])
redis.call('HSET', KEYS[1], ARGV[1], id)
return {1, id}
"""
)

# KEYS: A2A_SUBMIT_LUA's five, then budget, usage, protocol set; ARGV: A2A_SUBMIT_LUA's, then the
# major of the fleet's A2A version (the request's A2A-Version). The fleet API's submission, refused
# over a hard budget unless the task already has a record (a client's retry of an admitted task).
A2A_SUBMIT_BUDGETED_LUA: Final = (
    stamp_lua(8, 6)
    + "if redis.call('HEXISTS', KEYS[1], ARGV[1]) == 0 then\n"
    + budget_guard(6, 7)
    + "end\n"
    + A2A_SUBMIT_LUA
)
